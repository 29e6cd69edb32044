"""Weights-only loading (issue 11): crafted pickles run nothing, real files still load.

Payloads are built with the standard pickler from objects whose __reduce__ names a dangerous
callable, exactly as an attacker would; each would create a marker file if it ran, and every
test checks that the marker does not exist afterwards. Legitimate files come from paddle.save
itself (the reference for what must load) and are compared with paddle.load's result.
"""
import builtins
import os
import pickle
import re
import struct
import subprocess
import time

import numpy as np
import pytest

from plsc.errors import DataError
from plsc.weights import load_pickle, loads_pickle, read_state, save_pickle
from tiny import run_tool, tiny_config

try:  # numpy 2 / numpy 1
    from numpy._core.multiarray import _reconstruct
except ImportError:
    from numpy.core.multiarray import _reconstruct


class Call:
    """Pickles as `fn(*args)`; `fn` may itself be a Call (a getattr chain)."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __call__(self, *a):  # pickle insists that the reduce callable is callable
        raise AssertionError("never called here")

    def __reduce__(self):
        return self.fn, self.args


def payloads(marker):
    touch = f"touch {marker}"
    opener = f"open({str(marker)!r}, 'w').close()"
    import_os = Call(builtins.__import__, "os")
    return {
        "os.system": (Call(os.system, touch), "posix.system"),
        "subprocess.Popen": (Call(subprocess.Popen, ["touch", str(marker)]), "subprocess.Popen"),
        "eval": (Call(builtins.eval, opener), "builtins.eval"),
        "exec": (Call(builtins.exec, opener), "builtins.exec"),
        "getattr": (Call(Call(builtins.getattr, import_os, "system"), touch), "builtins.getattr"),
        "nested": ({"blocks.0.weight": np.ones((2, 2), np.float32),
                    "meta": [1, {"x": (Call(os.system, touch),)}]}, "posix.system"),
    }


@pytest.mark.parametrize("name", list(payloads("m")))
@pytest.mark.parametrize("protocol", [2, 4])
def test_payloads_are_refused_and_never_run(tmp_path, name, protocol):
    marker = tmp_path / "pwned"
    obj, forbidden = payloads(marker)[name]
    path = tmp_path / "evil.pdparams"
    path.write_bytes(pickle.dumps(obj, protocol=protocol))
    for load in (lambda: load_pickle(str(path), "Global.pretrained_model"),
                 lambda: read_state(str(tmp_path / "evil"), "Global.pretrained_model")):
        with pytest.raises(DataError) as e:
            load()
        msg = str(e.value)
        # protocol 2 writes Python 2 module names (commands.Popen, __builtin__.eval)
        module, attr = forbidden.rsplit(".", 1)
        assert re.match(rf"Global.pretrained_model: {re.escape(str(path))}: refusing to load: it "
                        rf"references [\w.]+\.{attr}, ", msg) and "\n" not in msg, msg
    assert not marker.exists()


def test_payloads_through_the_clis(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pdparams"
    evil.write_bytes(pickle.dumps({"w": np.zeros(2, np.float32),
                                   "x": Call(os.system, f"touch {marker}")}, protocol=4))
    cfg = tiny_config(tmp_path / "cfg", tmp_path / "data")
    r = run_tool("eval", ["-c", cfg, "-o", f"Global.pretrained_model={tmp_path / 'evil'}"],
                 timeout=120)
    assert r.returncode == 2, r.stderr[-2000:]
    assert r.stderr.strip().splitlines()[-1].startswith(  # the engine names the config key
        f"error: Global.pretrained_model: {evil}: refusing to load: it references posix.system,")
    assert "Traceback" not in r.stderr
    r = run_tool("convert", ["paddle2npz", str(tmp_path / "evil"), str(tmp_path / "out.npz")],
                 timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith(
        f"error: {evil}: refusing to load: it references posix.system,")
    assert not marker.exists() and not (tmp_path / "out.npz").exists()


def _array_claiming(shape, data=b""):
    """An ndarray pickle whose state declares `shape` but carries `data`."""
    class Fake:
        def __reduce__(self):
            return (_reconstruct, (np.ndarray, (0,), b"b"),
                    (1, shape, np.dtype("float32"), False, data))
    return pickle.dumps({"w": Fake()}, protocol=4)


@pytest.mark.parametrize("name,blob,why", [
    ("array", _array_claiming((1 << 20, 1 << 20)), "declares 4398046511104 bytes but holds 0"),
    ("bytes", b"\x80\x04\x8e" + struct.pack("<Q", 1 << 60) + b"xx", "declares 1152921504606846976 bytes"),
    ("string", b"\x80\x04\x8d" + struct.pack("<Q", 1 << 40) + b"xx", "declares 1099511627776 bytes"),
    ("container", b"\x80\x04](" + b"N" * 3_000_000 + b"e.", "more than 1,000,000 pickle operations"),
    ("bytes()", pickle.dumps(Call(bytes, 1 << 40), protocol=4), "builtins.bytes called with arg"),
], ids=lambda v: v if isinstance(v, str) and len(v) < 12 else "")
def test_memory_bombs_are_refused_fast(tmp_path, name, blob, why):
    import resource
    path = tmp_path / "bomb.pdparams"
    path.write_bytes(blob)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    with pytest.raises(DataError, match=why):
        load_pickle(str(path))
    assert time.perf_counter() - t0 < 5
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 200, grown_mb


def test_shared_references_cost_their_size_not_their_expansion():
    # 60 levels of [x, x]: 2**60 leaves if expanded, 60 lists in memory.
    x = [1]
    for _ in range(60):
        x = [x, x]
    t0 = time.perf_counter()
    r = loads_pickle(pickle.dumps(x, protocol=4), "t")
    assert r[0] is r[1] and r[0][0] is r[0][1]
    assert time.perf_counter() - t0 < 1


def _eq(a, b):
    if isinstance(a, dict):
        return type(b) is dict and a.keys() == b.keys() and all(_eq(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(_eq, a, b))
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b)
    return type(a) is type(b) and a == b


def _tiny_model_and_optimizer():
    import paddle
    paddle.seed(0)
    model = paddle.nn.Sequential(paddle.nn.Linear(4, 3), paddle.nn.LayerNorm(3))
    lr = paddle.optimizer.lr.CosineAnnealingDecay(0.1, 10)
    opt = paddle.optimizer.AdamW(lr, parameters=model.parameters(), multi_precision=True)
    model(paddle.randn([2, 4])).sum().backward()
    opt.step()
    return model, opt, lr


@pytest.mark.parametrize("protocol", [2, 3, 4])
def test_paddle_save_files_load_like_paddle_load(tmp_path, protocol):
    import paddle
    model, opt, lr = _tiny_model_and_optimizer()
    files = {
        "fp32.pdparams": model.state_dict(),
        "fp16.pdparams": {k: v.astype("float16") for k, v in model.state_dict().items()},
        "o.pdopt": {"optimizer": opt.state_dict(), "lr_scheduler": lr.state_dict(), "scaler": {}},
        "misc.pdparams": {"n": 3, "f": 1.5, "s": "x", "l": [1, (2, None)],
                          "i": np.int64(3), "e": np.zeros((0, 2)),
                          "F": np.asfortranarray(np.arange(6.0).reshape(2, 3))},
    }
    for name, obj in files.items():
        path = str(tmp_path / name)
        paddle.save(obj, path, protocol=protocol)
        assert _eq(load_pickle(path), paddle.load(path, return_numpy=True)), name
    opt2 = paddle.optimizer.AdamW(0.1, parameters=model.parameters(), multi_precision=True)
    opt2.set_state_dict(load_pickle(str(tmp_path / "o.pdopt"))["optimizer"])  # numpy accepted


def test_plsc_fp16_and_bf16_files_load_into_a_model(tmp_path):
    import paddle
    from plsc.weights import assign
    model, _, _ = _tiny_model_and_optimizer()
    for dtype in ("float16", "bfloat16"):
        stored = {k: v.astype(dtype) for k, v in model.state_dict().items()}
        paddle.save(stored, str(tmp_path / dtype) + ".pdparams")  # tensors: name table inside
        state = read_state(str(tmp_path / dtype))
        target, _, _ = _tiny_model_and_optimizer()
        assign(target, state, dtype)
        for k, v in target.state_dict().items():  # reference: paddle's own cast to fp32
            np.testing.assert_array_equal(v.numpy(), stored[k].astype("float32").numpy())


def test_save_pickle_round_trips_through_paddle_load_and_is_atomic(tmp_path, monkeypatch):
    import paddle
    model, opt, _ = _tiny_model_and_optimizer()
    obj = {"optimizer": opt.state_dict(), "w": np.arange(4, dtype=np.float16), "n": [1, 2.5]}
    path = str(tmp_path / "x.pdopt")
    save_pickle(obj, path)
    ours, theirs = load_pickle(path), paddle.load(path, return_numpy=True)
    assert _eq(ours, theirs) and ours["n"] == [1, 2.5]
    for k, v in opt.state_dict().items():
        if hasattr(v, "numpy"):
            np.testing.assert_array_equal(ours["optimizer"][k], v.numpy())
    before = open(path, "rb").read()
    with pytest.raises(TypeError, match=r"obj\['bad'\] is a object"):
        save_pickle({"bad": object()}, path)
    monkeypatch.setattr(os, "replace", lambda *a: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError):
        save_pickle({"w": np.zeros(3)}, path)
    assert open(path, "rb").read() == before and os.listdir(tmp_path) == ["x.pdopt"]


def test_cifar_batches_are_read_weights_only(tmp_path):
    import io
    import tarfile
    from plsc.data.datasets import CIFAR10
    marker = tmp_path / "pwned"
    path = str(tmp_path / "cifar-10-python.tar.gz")
    with tarfile.open(path, "w:gz") as tar:
        data = pickle.dumps({b"data": np.zeros((1, 3072), np.uint8), b"labels": [0],
                             b"x": Call(os.system, f"touch {marker}")}, protocol=2)
        info = tarfile.TarInfo("cifar-10-batches-py/test_batch")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    with pytest.raises(DataError, match=r"test_batch': refusing to load: it references "
                                        r"posix\.system,"):
        CIFAR10(path, "test")
    assert not marker.exists()


def test_missing_weights_name_the_key(tmp_path):
    with pytest.raises(DataError) as e:
        read_state(str(tmp_path / "nope"), "Global.pretrained_model")
    assert str(e.value) == (f"Global.pretrained_model: checkpoint not found: {tmp_path / 'nope'} "
                            f"(nor {tmp_path / 'nope'}.pdparams)")
    junk = tmp_path / "junk.pdparams"
    junk.write_bytes(b"hello world")
    with pytest.raises(DataError, match=r"^Global.checkpoint: .*junk.pdparams: not a weights file"):
        read_state(str(junk), "Global.checkpoint")
