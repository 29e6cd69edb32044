"""plsc's compiled CPU kernels (plsc/models/cpu_kernels.cc) against float64 numpy, through the
model against Paddle's own kernels, and the fallbacks (no compiler, PLSC_CPU_KERNELS=0).

Sizes above the kernels' threading threshold (2^16 elements per thread) with a remainder, so
the split across threads is exercised. No timings are asserted (tools/benchmark.py measures).
"""
import math
import os

import numpy as np
import paddle
import pytest

from plsc.models import build_model, cpu_kernels
from tiny import run_tool, tiny_config

pytestmark = pytest.mark.skipif(not cpu_kernels.available(),
                                reason="plsc's CPU kernels could not be built here")

_erf = np.vectorize(math.erf)


@pytest.fixture(autouse=True)
def two_threads(monkeypatch):
    """The kernels read OMP_NUM_THREADS at each call (`import paddle` set it to 1 here)."""
    monkeypatch.setenv("OMP_NUM_THREADS", "2")


def _leaf(a):
    t = paddle.to_tensor(a)
    t.stop_gradient = False
    return t


def test_gelu_matches_numpy():
    rng = np.random.default_rng(0)
    x_np = (rng.standard_normal(3 * 2**16 + 77) * 3).astype(np.float32)
    g_np = rng.standard_normal(x_np.shape).astype(np.float32)
    x64 = x_np.astype(np.float64)
    cdf = 0.5 * (1 + _erf(x64 / math.sqrt(2)))
    pdf = np.exp(-0.5 * x64 ** 2) / math.sqrt(2 * math.pi)
    want = {"y": x64 * cdf, "dx": g_np * (cdf + x64 * pdf)}
    errors = {}
    for name, fn in (("ours", cpu_kernels.gelu), ("paddle", paddle.nn.functional.gelu)):
        x = _leaf(x_np)
        y = fn(x)
        (y * paddle.to_tensor(g_np)).sum().backward()
        errors[name] = {"y": np.abs(y.numpy() - want["y"]).max(),
                        "dx": np.abs(x.grad.numpy() - want["dx"]).max()}
    # x * (1 + erf(x / sqrt 2)) loses the low bits of tiny negative outputs in float32 (in
    # Paddle's kernel too): an absolute bound, and no worse than Paddle's own GELU.
    for key in ("y", "dx"):
        assert errors["ours"][key] < 1e-6, errors
        assert errors["ours"][key] <= 2 * errors["paddle"][key] + 1e-8, errors


@pytest.mark.parametrize("scale", [0.125, 0.3])
def test_scaled_softmax_matches_numpy(scale):
    rng = np.random.default_rng(1)
    x_np = (rng.standard_normal((5, 3, 197, 197)) * 6).astype(np.float32)
    g_np = rng.standard_normal(x_np.shape).astype(np.float32)
    x = _leaf(x_np)
    y = cpu_kernels.scaled_softmax(x, scale)
    (y * paddle.to_tensor(g_np)).sum().backward()
    z = scale * x_np.astype(np.float64)
    e = np.exp(z - z.max(-1, keepdims=True))
    p = e / e.sum(-1, keepdims=True)
    grad = scale * p * (g_np - (g_np * p).sum(-1, keepdims=True))
    np.testing.assert_allclose(y.numpy(), p, rtol=0, atol=2e-7)
    np.testing.assert_allclose(x.grad.numpy(), grad, rtol=0, atol=2e-7 * np.abs(grad).max())


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_inputs_stay_non_finite(bad):
    """-ffast-math must not hide a NaN/inf from the skip check and the loss scaler."""
    x_np = np.linspace(-3, 3, 5 * (2**15 + 3), dtype=np.float32)
    x_np[70000] = bad
    for fn in (cpu_kernels.gelu, lambda t: cpu_kernels.scaled_softmax(t.reshape([-1, 5]), 0.5)):
        x = _leaf(x_np)
        y = fn(x)
        assert not np.isfinite(y.numpy()).all()
        x.clear_gradient()
        g = np.ones(y.shape, np.float32)
        g[0] = np.nan  # a non-finite incoming gradient also reaches the input gradient
        paddle.autograd.backward([y], [paddle.to_tensor(g)])
        assert not np.isfinite(x.grad.numpy()).all()


def _grads(model, x, labels):
    model.clear_gradients()
    loss = paddle.nn.functional.cross_entropy(model(x), labels).mean()
    loss.backward()
    return {n: p.grad.numpy().copy() for n, p in model.named_parameters()}


def test_model_gradients_equal_paddle_kernels(monkeypatch):
    """A ViT's training gradients through the kernels equal those through Paddle's GELU and
    softmax (and the kernels are really used)."""
    paddle.seed(0)
    model = build_model({"name": "VisionTransformer", "img_size": 32, "patch_size": 4,
                         "embed_dim": 64, "depth": 2, "num_heads": 4, "class_num": 10})
    model.train()
    x = paddle.randn([4, 3, 32, 32])
    labels = paddle.randint(0, 10, [4])
    calls = []
    for name in ("gelu", "scaled_softmax"):
        real = getattr(cpu_kernels, name)
        monkeypatch.setattr(cpu_kernels, name,
                            lambda *a, real=real, name=name: calls.append(name) or real(*a))
    ours = _grads(model, x, labels)
    assert sorted(set(calls)) == ["gelu", "scaled_softmax"] and len(calls) == 4
    monkeypatch.setitem(cpu_kernels._state, "ops", "switched off by the test")
    paddles = _grads(model, x, labels)
    assert len(calls) == 4
    for name, g in paddles.items():
        scale = float(np.abs(g).max())
        np.testing.assert_allclose(ours[name], g, rtol=0, atol=1e-5 * scale + 1e-12,
                                   err_msg=name)


@pytest.mark.parametrize("env, warned", [({"PLSC_CPU_KERNELS": "0"}, False),
                                          ({"CXX": "/bin/false"}, True)])
def test_training_falls_back_to_paddle_kernels(tmp_path, monkeypatch, env, warned):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("PLSC_CACHE_DIR", str(tmp_path / "cache"))  # nothing built yet
    path = tiny_config(tmp_path, tmp_path / "data", epochs=1, train_size=8, val_size=4,
                       **{"Global.eval_during_train": False})
    r = run_tool("train", ["-c", path])
    assert r.returncode == 0, r.stderr[-2000:]
    out = (r.stdout + r.stderr).splitlines()
    warnings = [ln for ln in out if "CPU kernels are not available" in ln]
    if warned:  # one line, and training went on
        assert len(warnings) == 1, warnings
        assert "plsc's CPU kernels are not available (/bin/false failed: 1): CPU training uses " \
            "Paddle's slower GELU and softmax" in warnings[0]
    else:  # not even tried
        assert warnings == [] and not [ln for ln in out if "building plsc's CPU kernels" in ln]
        assert not os.path.exists(tmp_path / "cache")


def test_a_damaged_cached_library_is_one_warning_line(tmp_path, monkeypatch):
    """A truncated .so in the cache (e.g. a disk filled mid-copy): one line naming the file and
    how to rebuild, and training goes on with Paddle's kernels."""
    monkeypatch.setenv("PLSC_CACHE_DIR", str(tmp_path / "cache"))
    lib_dir = cpu_kernels.cache_dir()
    os.makedirs(lib_dir)
    with open(os.path.join(lib_dir, cpu_kernels.LIB_NAME), "w") as f:
        f.write("not a library")
    path = tiny_config(tmp_path, tmp_path / "data", epochs=1, train_size=8, val_size=4,
                       **{"Global.eval_during_train": False})
    r = run_tool("train", ["-c", path])
    assert r.returncode == 0, r.stderr[-2000:]
    out = (r.stdout + r.stderr).splitlines()
    i = next(i for i, ln in enumerate(out) if "CPU kernels are not available" in ln)
    assert f"(cannot load {os.path.join(lib_dir, cpu_kernels.LIB_NAME)}: " in out[i]
    assert f"; delete {lib_dir} to rebuild): CPU training uses Paddle's slower" in out[i]
    assert "[Train]" in out[i + 1]  # the reason did not spill onto further lines
