"""Failures end the run cleanly: one failing rank brings a launched job down with its one line
first, and a checkpoint that cannot be written leaves the previous one loadable."""
import errno
import os

import numpy as np
import pytest
from tiny import run_tool, tiny_config

from plsc.config import dump_config, get_config
from plsc.engine import checkpoint as ckpt
from plsc.errors import TrainingError


def _error_lines(text):
    return [x for x in text.splitlines() if x.startswith("error:") or ": error: " in x]


def _assert_one_line_failure(r, line):
    console = r.stdout + r.stderr
    assert r.returncode != 0, console
    assert _error_lines(console)[0] == line, console
    # no Python traceback without --debug (Paddle's own C++ abort report is not ours to hide)
    assert not [x for x in console.splitlines() if x.startswith("Traceback (most recent")]


def test_one_failing_rank_brings_the_launched_job_down(tmp_path, monkeypatch):
    path = tiny_config(tmp_path, tmp_path / "shapes", epochs=3)
    monkeypatch.setenv("PLSC_TEST_FAIL_AT", "1:2")  # rank 1 raises in its 2nd training step
    # the timeout is a hang guard: a rank left waiting in a collective would hit it
    r = run_tool("train", ["-c", path], nproc=2, log_dir=tmp_path / "log", timeout=90)
    _assert_one_line_failure(r, "rank 1: error: RuntimeError: injected failure at step 2 "
                                "(PLSC_TEST_FAIL_AT) (run with --debug for the traceback)")


def test_unwritable_checkpoint_in_a_launched_run_ends_every_rank(tmp_path):
    path = tiny_config(tmp_path, tmp_path / "shapes", epochs=1,
                       **{"Global.eval_during_train": False, "Global.auto_resume": True})
    out = tmp_path / "out/VisionTransformer"
    (out / "latest.pdparams").mkdir(parents=True)  # the rename onto it fails (even as root)
    # This run's own record and no completed save: auto-resume treats the directory as this run
    # stopped before its first save and starts over (tests/test_run_dir.py), reaching the save.
    (out / "config.yaml").write_text(dump_config(get_config(path)))
    r = run_tool("train", ["-c", path], nproc=2, log_dir=tmp_path / "log", timeout=90)
    _assert_one_line_failure(r, f"rank 0: error: cannot save checkpoint to {out / 'latest'}: "
                                "Is a directory")


def _set(value):
    return {".pdparams": {"w": np.full(3, value, np.float32)},
            ".pdopt": {"optimizer": {"step": np.array([value])}}}


@pytest.mark.parametrize("where,err", [("_dump", errno.ENOSPC), ("replace", errno.EACCES)])
def test_failed_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch, where, err):
    ckpt.write_set(str(tmp_path), "latest", _set(1.0), {"epoch": 1})
    before = sorted(os.listdir(tmp_path))
    calls = []

    def failing(real):
        def f(*args):
            calls.append(args)
            if len(calls) == 2:  # partway: after the first file of the set
                raise OSError(err, os.strerror(err))
            return real(*args)
        return f

    if where == "_dump":
        monkeypatch.setattr(ckpt, "_dump", failing(ckpt._dump))
    else:
        monkeypatch.setattr(ckpt.os, "replace", failing(os.replace))
    with pytest.raises(TrainingError) as e:
        ckpt.write_set(str(tmp_path), "latest", _set(2.0), {"epoch": 2})
    monkeypatch.undo()
    assert str(e.value) == f"cannot save checkpoint to {tmp_path / 'latest'}: {os.strerror(err)}"
    assert not [f for f in os.listdir(tmp_path) if ".tmp-" in f]
    params, opt, states = ckpt.load_resume(str(tmp_path / "latest"))
    assert np.array_equal(params["w"], np.full(3, 1.0, np.float32)) and states["epoch"] == 1
    assert np.array_equal(opt["optimizer"]["step"], np.array([1.0]))
    if where == "_dump":  # nothing of the new set reached the directory
        assert sorted(os.listdir(tmp_path)) == before
