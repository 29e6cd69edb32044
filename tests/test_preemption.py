"""Preemption: a 2-process launch with Global.auto_resume, SIGKILLed (launcher and workers, the
whole process group) at seeded-random moments and once between the renames of a checkpoint
save, relaunched each time with the same command, ends bitwise equal to an uninterrupted run."""
import os
import random
import re
import signal
import subprocess
import sys
import time

import numpy as np
import paddle

from tiny import ROOT, tiny_config

MODEL = "VisionTransformer"


def _cmd(cfg, log_dir):
    return [sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", "2",
            "--log_dir", str(log_dir), os.path.join(ROOT, "tools", "train.py"), "-c", cfg,
            "-o", "Global.auto_resume=True"]


STEP = re.compile(r"\[Train\]\[Epoch (\d+)/\d+\]\[Iter: (\d+)/(\d+)\]")


def _logged_step(log_file):
    """The last global step rank 0 logged in this launch (0 before any)."""
    try:
        with open(log_file) as f:
            found = STEP.findall(f.read())
    except OSError:
        return 0
    if not found:
        return 0
    e, i, n = map(int, found[-1])
    return (e - 1) * n + i


def _launch(cfg, log_dir, kill_at_step=None, env_extra=None, timeout=120):
    """Exit code, or None when the whole process group was SIGKILLed once rank 0 had logged
    global step `kill_at_step`."""
    env = dict(os.environ, PYTHONPATH=ROOT, **(env_extra or {}))
    p = subprocess.Popen(_cmd(cfg, log_dir), cwd=ROOT, env=env, start_new_session=True,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    while p.poll() is None and time.time() < deadline:
        if kill_at_step is not None and _logged_step(os.path.join(log_dir, "workerlog.0")) \
                >= kill_at_step:
            os.killpg(p.pid, signal.SIGKILL)  # the whole group: launcher + both workers
            p.wait()
            return None
        time.sleep(0.02)
    if p.poll() is None:
        os.killpg(p.pid, signal.SIGKILL)
        raise AssertionError(f"launch did not finish in {timeout}s")
    return p.returncode


def _params(out):
    return paddle.load(os.path.join(out, MODEL, "latest.pdparams"))


def test_killed_and_relaunched_run_equals_uninterrupted(tmp_path):
    kw = dict(epochs=3, train_size=32, val_size=5, batch_size=2)
    ref = tiny_config(tmp_path / "ref", tmp_path / "data", **kw)
    assert _launch(ref, tmp_path / "ref_log") == 0
    cfg = tiny_config(tmp_path / "run", tmp_path / "data", **kw)
    rng = random.Random(1234)
    # 1) rank 0 SIGKILLs itself between the renames of `latest` at step 16 (end of epoch 2):
    #    latest is torn, its backup (epoch 1) is kept, the launcher stops the peer and fails.
    assert _launch(cfg, tmp_path / "l0", env_extra={"PLSC_TEST_KILL_IN_SAVE": "latest:16"}) != 0
    run = tmp_path / "run" / "out" / MODEL
    assert os.path.exists(run / ".latest.bak.pdstates")
    # 2) whole-group SIGKILLs at seeded-random steps after the resume point, then a relaunch
    #    that finishes. Steps run 9..24 (8 per epoch); 16 and 24 end an epoch (save).
    targets = sorted(rng.sample(range(10, 24), 3))  # seed 1234
    launches = [(t, f"l{j + 1}") for j, t in enumerate(targets)] + [(None, "l4")]
    kills = 0
    for target, name in launches:
        rc = _launch(cfg, tmp_path / name, kill_at_step=target)
        kills += rc is None
        if target is None:
            assert rc == 0, open(tmp_path / name / "workerlog.0").read()[-2000:]
    i = len(launches) - 1
    logs = "".join(open(tmp_path / f"l{j}" / "workerlog.0").read() for j in range(1, i + 2))
    assert kills >= 1
    assert f"resuming from {run}/.latest.bak (epoch 1, step 8)" in logs  # the torn save
    a, b = _params(str(tmp_path / "ref" / "out")), _params(str(tmp_path / "run" / "out"))
    assert sorted(a) == sorted(b)
    for k in a:
        assert np.array_equal(np.asarray(a[k]), np.asarray(b[k])), k
