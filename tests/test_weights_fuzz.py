"""Seeded fuzzing of every weights reader (issue 11): truncated, bit-flipped, spliced and random
files. Each case must either load or raise PlscError (one line) within a time bound; anything
else escaping - IndexError, MemoryError, a numpy or zip exception - is a bug."""
import os
import time

import numpy as np
import pytest

from plsc.errors import PlscError
from plsc.weights import load_pickle, read_state, save_pickle

CASES_PER_FORMAT = 90
SECONDS_PER_CASE = 2.0


def _sources(tmp_path):
    """One valid file per format, tiny, from the writers users' files come from."""
    import paddle
    from safetensors.numpy import save_file
    rng = np.random.default_rng(0)
    state = {"patch_embed.proj.weight": rng.standard_normal((8, 3, 4, 4)).astype(np.float32),
             "blocks.0.norm1.weight": rng.standard_normal(8).astype(np.float16)}
    out = {}
    out["pdparams"] = str(tmp_path / "a.pdparams")
    paddle.save({k: paddle.to_tensor(v) for k, v in state.items()}, out["pdparams"])
    out["pdopt"] = str(tmp_path / "a.pdopt")
    save_pickle({"optimizer": {"w_moment1_0": state["blocks.0.norm1.weight"],
                               "master_weights": {"w": np.ones(3, np.float32)},
                               "LR_Scheduler": {"last_epoch": 3, "last_lr": 0.1}},
                 "lr_scheduler": {"last_epoch": 3}, "scaler": {}}, out["pdopt"])
    out["npz"] = str(tmp_path / "a.npz")
    np.savez(out["npz"], **{"embedding/kernel": rng.standard_normal((4, 4, 3, 8)).astype(np.float32),
                            "cls": np.zeros((1, 1, 8), np.float32)})
    out["safetensors"] = str(tmp_path / "a.safetensors")
    save_file({"cls_token": np.zeros((1, 1, 8), np.float32)}, out["safetensors"])
    return out


def _mutate(data, rng):
    kind = rng.integers(4)
    if kind == 0:  # truncated
        return data[: rng.integers(len(data))]
    if kind == 1:  # bit flips
        b = bytearray(data)
        for _ in range(rng.integers(1, 9)):
            i = rng.integers(len(b))
            b[i] ^= 1 << int(rng.integers(8))
        return bytes(b)
    if kind == 2:  # a random run spliced in
        i = rng.integers(len(data))
        return data[:i] + rng.bytes(int(rng.integers(1, 64))) + data[i + int(rng.integers(64)):]
    return data[:2] + rng.bytes(int(rng.integers(0, 512)))  # random bytes behind a valid magic


@pytest.mark.parametrize("fmt", ["pdparams", "pdopt", "npz", "safetensors"])
def test_fuzzed_files_fail_cleanly(tmp_path, fmt):
    src = _sources(tmp_path)[fmt]
    data = open(src, "rb").read()
    rng = np.random.default_rng(["pdparams", "pdopt", "npz", "safetensors"].index(fmt))
    read = load_pickle if fmt == "pdopt" else read_state
    path = str(tmp_path / f"fuzz.{fmt}")
    outcomes = {"loaded": 0, "refused": 0}
    for case in range(CASES_PER_FORMAT):
        with open(path, "wb") as f:
            f.write(_mutate(data, rng))
        t0 = time.perf_counter()
        try:
            read(path)
            outcomes["loaded"] += 1
        except PlscError as e:
            assert "\n" not in str(e) and str(e), (case, str(e))
            outcomes["refused"] += 1
        assert time.perf_counter() - t0 < SECONDS_PER_CASE, case
    assert outcomes["refused"] > CASES_PER_FORMAT // 2, outcomes


def test_fuzzed_files_through_the_cli(tmp_path):
    from tiny import run_tool
    src = _sources(tmp_path)
    rng = np.random.default_rng(7)
    for i, fmt in enumerate(["pdparams", "npz", "safetensors", "pdparams"]):
        bad = tmp_path / f"bad{i}.{fmt}"
        bad.write_bytes(_mutate(open(src[fmt], "rb").read()[:200], rng))
        sub = {"pdparams": "paddle2npz", "npz": "npz2paddle", "safetensors": "timm2paddle"}[fmt]
        src_arg = str(bad)[: -len(".pdparams")] if fmt == "pdparams" else str(bad)
        r = run_tool("convert", [sub, src_arg, str(tmp_path / f"out{i}")], timeout=60)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and lines[-1].startswith("error: "), r.stderr[-1500:]
        assert "Traceback" not in r.stderr
    assert not [f for f in os.listdir(tmp_path) if f.startswith("out")]
