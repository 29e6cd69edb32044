"""The speed paths compute what the plain paths compute:

- the CPU training Linear (bias inside the GEMM, bias gradient as a BLAS product) and LayerNorm
  (backward written out in GEMMs and same-shape ops) against float64 numpy gradients, frozen
  parameters included;
- Global.to_static training equals dygraph training over 3 optimizer steps (float noise);
- evaluation through an exported predictor (`tools/eval.py --exported`) and through a
  to_static model equals dygraph evaluation;
- `tools/benchmark.py train --against timm` says in one line when torch/timm are missing and
  runs both frameworks when a torch environment is there (/work/venv-timm, else skipped).
No timings are asserted.
"""
import importlib.util
import os
import re
import sys

import numpy as np
import paddle
import pytest

from tiny import run_tool, tiny_config

TIMM_PYTHON = os.environ.get("PLSC_TIMM_PYTHON", "/work/venv-timm/bin/python")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return tmp_path_factory.mktemp("shapes")


# ---------------------------------------------------------------- the CPU training Linear

def _train_layer(layer, x_np, g_np, w_np, b_np, frozen):
    """(x, y, layer) after y = layer(x) in training mode and backward of sum(y * g); the names
    in `frozen` (x, weight, bias) get no gradient."""
    layer.train()
    layer.weight.set_value(w_np)
    layer.bias.set_value(b_np)
    x = paddle.to_tensor(x_np, stop_gradient="x" in frozen)
    layer.weight.stop_gradient = "weight" in frozen
    layer.bias.stop_gradient = "bias" in frozen
    y = layer(x)
    (y * paddle.to_tensor(g_np)).sum().backward()
    return x, y, layer


@pytest.mark.parametrize("frozen", [(), ("weight",), ("bias",), ("x",)])
def test_cpu_linear_gradients_match_numpy(frozen):
    from plsc.models.cpu_ops import Linear

    rng = np.random.default_rng(0)
    x_np = rng.standard_normal((3, 5, 8)).astype(np.float32)
    g_np = rng.standard_normal((3, 5, 6)).astype(np.float32)
    w_np = rng.standard_normal((8, 6)).astype(np.float32)
    b_np = rng.standard_normal(6).astype(np.float32)
    x, y, layer = _train_layer(Linear(8, 6), x_np, g_np, w_np, b_np, frozen)

    x64, g64 = x_np.astype(np.float64), g_np.astype(np.float64)
    np.testing.assert_allclose(y.numpy(), x64 @ w_np + b_np, rtol=0, atol=2e-6)
    expected = {"x": g64 @ w_np.T.astype(np.float64),
                "weight": x64.reshape(-1, 8).T @ g64.reshape(-1, 6),
                "bias": g64.reshape(-1, 6).sum(0)}
    got = {"x": x.grad, "weight": layer.weight.grad, "bias": layer.bias.grad}
    for name, want in expected.items():
        if name in frozen:
            assert got[name] is None, name
        else:
            np.testing.assert_allclose(got[name].numpy(), want, rtol=0, atol=1e-5, err_msg=name)


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "gemm"])
@pytest.mark.parametrize("frozen", [(), ("weight",), ("bias",), ("x",)])
def test_cpu_layer_norm_matches_numpy(frozen, compiled, monkeypatch):
    """Both backward paths: the compiled kernel (2 threads, rows split with a remainder) and the
    GEMM form used when no compiler is available."""
    from plsc.models import cpu_kernels
    from plsc.models.cpu_ops import LayerNorm

    if compiled and not cpu_kernels.available():
        pytest.skip("plsc's CPU kernels could not be built here")
    if not compiled:
        monkeypatch.setitem(cpu_kernels._state, "ops", "switched off by the test")
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    rng = np.random.default_rng(1)
    # an offset and scale per row, as residual streams have
    rows = (47, 131)  # 6157 rows of 24: two threads' worth for the compiled kernel
    x_np = (rng.standard_normal((*rows, 24)) * rng.uniform(0.1, 5, (*rows, 1))
            + rng.uniform(-3, 3, (*rows, 1))).astype(np.float32)
    g_np = rng.standard_normal((*rows, 24)).astype(np.float32)
    w_np, b_np = rng.standard_normal((2, 24)).astype(np.float32)
    x, y, layer = _train_layer(LayerNorm(24, epsilon=1e-6), x_np, g_np, w_np, b_np, frozen)

    x64, g64, w64 = x_np.astype(np.float64), g_np.astype(np.float64), w_np.astype(np.float64)
    mu = x64.mean(-1, keepdims=True)
    rstd = 1.0 / np.sqrt(((x64 - mu) ** 2).mean(-1, keepdims=True) + 1e-6)
    xhat = (x64 - mu) * rstd
    # (Paddle's forward kernel loses ~1e-5 on rows with a large offset and a small spread)
    np.testing.assert_allclose(y.numpy(), xhat * w64 + b_np, rtol=0, atol=2e-5)
    # the output is Paddle's own kernel's
    np.testing.assert_array_equal(y.numpy(), paddle.nn.functional.layer_norm(
        paddle.to_tensor(x_np), [24], layer.weight, layer.bias, 1e-6).numpy())
    dxhat = g64 * w64
    expected = {"x": rstd * (dxhat - dxhat.mean(-1, keepdims=True)
                             - xhat * (dxhat * xhat).mean(-1, keepdims=True)),
                "weight": (g64 * xhat).reshape(-1, 24).sum(0),
                "bias": g64.reshape(-1, 24).sum(0)}
    got = {"x": x.grad, "weight": layer.weight.grad, "bias": layer.bias.grad}
    # Paddle's own kernel on the same data: the float32 noise floor of this (hard) input
    xp = paddle.to_tensor(x_np, stop_gradient=False)
    wp, bp = paddle.to_tensor(w_np, stop_gradient=False), paddle.to_tensor(b_np,
                                                                          stop_gradient=False)
    (paddle.nn.functional.layer_norm(xp, [24], wp, bp, 1e-6) * paddle.to_tensor(g_np)).sum() \
        .backward()
    paddles = {"x": xp.grad, "weight": wp.grad, "bias": bp.grad}
    for name, want in expected.items():
        if name in frozen:
            assert got[name] is None, name
        else:
            scale = float(np.abs(want).max())
            err = float(np.abs(got[name].numpy() - want).max()) / scale
            floor = float(np.abs(paddles[name].numpy() - want).max()) / scale
            assert err <= 2 * floor + 2e-7, (name, err, floor)


# ---------------------------------------------------------------- to_static training

def _train(path, *overrides):
    from plsc.config import get_config
    from plsc.engine import train

    train(get_config(path, list(overrides)))


def _weights(out_dir, prefix="latest"):
    state = paddle.load(os.path.join(out_dir, "VisionTransformer", prefix + ".pdparams"))
    return {k: np.asarray(v, dtype=np.float64) for k, v in state.items()}


def test_to_static_training_equals_dygraph_over_3_steps(tmp_path, data_root):
    path = tiny_config(tmp_path, data_root, epochs=1, **{
        "Global.eval_during_train": False, "Global.max_train_step": 3,
        "Optimizer": {"name": "AdamW", "weight_decay": 0.05,
                      "grad_clip": {"name": "ClipGradByGlobalNorm", "clip_norm": 1.0}},
        "LRScheduler.learning_rate": 1e-3, "LRScheduler.warmup_steps": 0})
    outs = {}
    for mode in (False, True):
        outs[mode] = str(tmp_path / f"out_{mode}")
        _train(path, f"Global.output_dir={outs[mode]}", f"Global.to_static={mode}")
    dy, st = _weights(outs[False]), _weights(outs[True])
    assert set(dy) == set(st)
    log = open(os.path.join(outs[True], "VisionTransformer", "train.log")).read()
    assert "Global.to_static: the model's forward runs as a static graph" in log
    # Training happened (the zero-initialised head moved), so equal weights mean equal steps.
    assert float(np.abs(dy["head.weight"]).max()) > 1e-4
    # The key third of each qkv bias has an exactly zero gradient (softmax ignores a constant
    # added to every key's score), so what AdamW applies there is normalised rounding noise,
    # which differs between any two kernel orders. Every other weight must agree.
    for k in [k for k in dy if k.endswith("attn.qkv.bias")]:
        d = dy[k].shape[0] // 3
        dy[k], st[k] = np.delete(dy[k], np.s_[d:2 * d]), np.delete(st[k], np.s_[d:2 * d])
    diff = max(float(np.abs(dy[k] - st[k]).max()) for k in dy)
    assert diff < 1e-6, sorted(((float(np.abs(dy[k] - st[k]).max()), k) for k in dy))[-3:]


def test_to_static_refuses_recompute(tmp_path, data_root):
    path = tiny_config(tmp_path, data_root, epochs=1, **{"Global.to_static": True,
                                                         "DistributedStrategy.recompute": True})
    r = run_tool("train", ["-c", path])
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines()[-1] == (
        "error: Global.to_static=True does not combine with DistributedStrategy.recompute: "
        "turn one of them off")


# ---------------------------------------------------------------- fast evaluation

@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_root):
    """A tiny model trained 4 steps, its config, and its export directory."""
    from plsc.apis import export_model
    from plsc.config import get_config

    tmp = tmp_path_factory.mktemp("trained")
    path = tiny_config(tmp, data_root, epochs=1, **{"Global.eval_during_train": False,
                                                    "Global.max_train_step": 4})
    _train(path)
    weights = os.path.join(str(tmp / "out"), "VisionTransformer", "latest")
    export = export_model(get_config(path), weights, output_dir=str(tmp / "export"))
    return path, weights, export["dir"]


def _eval(path, weights, exported=None, *overrides):
    from plsc.cli.eval import _evaluate
    from plsc.config import get_config

    cfg = get_config(path, [f"Global.pretrained_model={weights}", *overrides])
    return _evaluate(cfg, exported, None)


def test_eval_through_exported_predictor_equals_dygraph(trained):
    path, weights, export_dir = trained
    dygraph = _eval(path, weights)
    fast = _eval(path, weights, export_dir)
    assert set(fast) == set(dygraph) and "loss" in dygraph and "top1" in dygraph
    assert 0.0 < dygraph["loss"] < 5.0
    for k in dygraph:
        assert abs(fast[k] - dygraph[k]) < 1e-5, (k, fast[k], dygraph[k])


def test_eval_to_static_equals_dygraph(trained):
    path, weights, _ = trained
    dygraph = _eval(path, weights)
    static = _eval(path, weights, None, "Global.to_static=True")
    log = open(os.path.join(os.path.dirname(weights), "eval.log")).read()
    assert log.count("Global.to_static: the model's forward runs as a static graph") == 1
    for k in dygraph:
        assert abs(static[k] - dygraph[k]) < 1e-5, (k, static[k], dygraph[k])


def test_eval_tool_exported_needs_no_weights_and_checks_the_model(trained, tmp_path):
    path, _, export_dir = trained
    r = run_tool("eval", ["-c", path, "--exported", export_dir])
    assert r.returncode == 0, r.stderr
    assert re.search(r"^eval: loss=[0-9.]+, top1=[0-9.]+", r.stdout, re.M), r.stdout
    r = run_tool("eval", ["-c", path, "--exported", export_dir, "-o", "Model.img_size=32"])
    assert r.returncode == 2
    assert "holds VisionTransformer at 16px but the config evaluates VisionTransformer at 32px" \
        in r.stderr.strip().splitlines()[-1]


# ---------------------------------------------------------------- benchmark --against timm

BENCH_TINY = ["train", "--against", "timm", "--img-size", "32", "--batch-size", "2",
              "--steps", "1", "--repeats", "1"]


@pytest.mark.skipif(importlib.util.find_spec("torch") is not None,
                    reason="torch is importable in this environment")
def test_against_timm_without_torch_says_so_and_runs_plsc_alone():
    r = run_tool("benchmark", BENCH_TINY)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("timm comparison skipped: torch/timm not importable here")
    assert any(re.match(r"  plsc engine +: +[0-9.]+ images/s", ln) for ln in lines), r.stdout
    assert not any("timm + torch" in ln for ln in lines)
    # A python without torch named explicitly: the worker reports the failed import.
    r = run_tool("benchmark", BENCH_TINY + ["--timm-python", sys.executable])
    assert r.returncode == 0, r.stderr
    assert re.search(r"^timm comparison skipped for ViT_tiny_patch16_224: "
                     r"No module named '(torch|timm)'$", r.stdout, re.M), r.stdout


@pytest.mark.skipif(not os.path.isfile(TIMM_PYTHON), reason=f"no torch venv at {TIMM_PYTHON}")
def test_against_timm_runs_both_frameworks():
    r = run_tool("benchmark", BENCH_TINY + ["--timm-python", TIMM_PYTHON])
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert re.search(r"^  timm \+ torch +: +[0-9.]+ images/s", out, re.M), out
    assert re.search(r"^  plsc / timm +: x[0-9.]+", out, re.M), out


def test_apis_to_static_classifier_equals_dygraph(trained):
    from plsc.apis import init_model
    from plsc.config import get_config

    path, weights, export_dir = trained
    batch = np.random.default_rng(3).standard_normal((3, 3, 16, 16)).astype(np.float32)
    dygraph = init_model(path, weights, device="cpu").logits(batch)
    static = init_model(get_config(path, ["Global.to_static=True"]), weights,
                        device="cpu").logits(batch)
    exported = init_model(export_dir, device="cpu").logits(batch)
    assert np.abs(dygraph).max() > 1e-3  # a trained head: the logits are not all zero
    np.testing.assert_allclose(static, dygraph, rtol=0, atol=1e-5)
    np.testing.assert_allclose(exported, dygraph, rtol=0, atol=1e-5)
