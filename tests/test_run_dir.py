"""Output-directory policy (plsc/engine/run_dir.py), each branch through tools/train.py."""
import hashlib
import os
import shutil

import numpy as np
import paddle
import pytest

from tiny import run_tool, tiny_config, worker_logs

MODEL = "VisionTransformer"


def _files(d):
    """{relative path: (sha256, mtime_ns)} of everything under d."""
    out = {}
    for root, _, names in os.walk(d):
        for n in names:
            p = os.path.join(root, n)
            with open(p, "rb") as f:
                out[os.path.relpath(p, d)] = (hashlib.sha256(f.read()).hexdigest(),
                                              os.stat(p).st_mtime_ns)
    return out


def _last_line(result):
    lines = [ln for ln in result.stderr.splitlines() if ln.strip() and "ccache" not in ln]
    return lines[-1] if lines else ""


@pytest.fixture(scope="module")
def done(tmp_path_factory):
    """One finished 1-epoch run (max_train_step keeps it tiny)."""
    tmp = tmp_path_factory.mktemp("done")
    cfg = tiny_config(tmp, tmp / "data", epochs=1, train_size=16, val_size=5)
    r = run_tool("train", ["-c", cfg])
    assert r.returncode == 0, r.stderr[-2000:]
    return {"cfg": cfg, "out": str(tmp / "out"), "run": str(tmp / "out" / MODEL), "stdout": r.stdout}


def test_fresh_run_says_so(done):
    assert f"no complete checkpoint in {os.path.join(done['out'], MODEL)}: starting fresh" \
        in done["stdout"]
    assert os.path.isfile(os.path.join(done["run"], "config.yaml"))


def test_rerun_without_resume_refuses_and_touches_nothing(done):
    before = _files(done["run"])
    r = run_tool("train", ["-c", done["cfg"]])
    assert r.returncode != 0
    assert _last_line(r) == (
        f"error: {done['run']} already holds a run (checkpoints/config.yaml/logs): use a new "
        "Global.output_dir, -o Global.auto_resume=True to continue it, or "
        "-o Global.overwrite=True to move it aside")
    assert _files(done["run"]) == before


def test_finished_run_is_complete_and_untouched(done):
    before = _files(done["run"])
    r = run_tool("train", ["-c", done["cfg"], "-o", "Global.auto_resume=True"])
    assert r.returncode == 0, r.stderr[-2000:]
    assert "run already complete (epoch 1, step 4, Global.epochs=1)" in r.stdout
    assert "[Train]" not in r.stdout
    assert _files(done["run"]) == before


def test_mismatched_latest_is_refused(done):
    before = _files(done["run"])
    r = run_tool("train", ["-c", done["cfg"], "-o", "Global.auto_resume=True",
                           "Model.embed_dim=16", "Global.epochs=2"])
    assert r.returncode != 0
    assert _last_line(r).startswith(f"error: Global.auto_resume: {done['run']}/latest was "
                                    "written with a different Model section: use a new")
    r = run_tool("train", ["-c", done["cfg"], "-o", "Global.auto_resume=True",
                           "Global.epochs=2"], nproc=2, log_dir=os.path.join(done["out"], "..", "l"))
    assert r.returncode != 0
    # Every rank checks; the first to fail exits 2 and the launcher stops the others, so the
    # line is in whichever rank got there first.
    assert "written with world size 1 (now 2)" in worker_logs(os.path.join(done["out"], "..", "l"))
    assert _files(done["run"]) == before


def test_eval_writes_eval_log_only(done):
    before = _files(done["run"])
    r = run_tool("eval", ["-c", done["cfg"], "-o",
                          f"Global.pretrained_model={done['run']}/latest"])
    assert r.returncode == 0, r.stderr[-2000:]
    after = _files(done["run"])
    assert "eval.log" in after and "eval.log" not in before
    del after["eval.log"]
    assert after == before  # config.yaml and train.log byte-identical, same mtimes
    os.remove(os.path.join(done["run"], "eval.log"))


def test_bad_key_and_missing_data_write_nothing(tmp_path):
    cfg = tiny_config(tmp_path, tmp_path / "data", epochs=1, train_size=16, val_size=5)
    r = run_tool("train", ["-c", cfg, "-o", "Global.no_such_key=1"])
    assert r.returncode != 0 and "no_such_key" in _last_line(r)
    assert not os.path.exists(tmp_path / "out")
    # failures while building (after the process group/seed/logger are set up)
    for override, says in (("Global.pretrained_model=/nonexistent/w", "checkpoint not found"),
                           ("DataLoader.Train.sampler.batch_size=64", "make 0 micro-batch(es)")):
        r = run_tool("train", ["-c", cfg, "-o", override])
        assert r.returncode != 0 and says in _last_line(r), _last_line(r)
        assert not os.path.exists(tmp_path / "out")


def test_overwrite_moves_aside(tmp_path):
    cfg = tiny_config(tmp_path, tmp_path / "data", epochs=1, train_size=16, val_size=5)
    run = tmp_path / "out" / MODEL
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("old record\n")
    r = run_tool("train", ["-c", cfg, "-o", "Global.overwrite=True", "Global.max_train_step=1"])
    assert r.returncode == 0, r.stderr[-2000:]
    olds = [p for p in os.listdir(tmp_path / "out") if p.startswith(MODEL + ".old-")]
    assert len(olds) == 1
    assert (tmp_path / "out" / olds[0] / "config.yaml").read_text() == "old record\n"
    assert f"moved the previous run {run} to {tmp_path / 'out' / olds[0]}" in r.stdout
    assert (run / "latest.pdparams").exists()


def _params(prefix):
    return paddle.load(prefix + ".pdparams")


def test_auto_resume_equals_uninterrupted_and_explicit_checkpoint_wins(tmp_path):
    full = tiny_config(tmp_path / "a", tmp_path / "data", epochs=2, train_size=16, val_size=5)
    assert run_tool("train", ["-c", full]).returncode == 0
    cfg = tiny_config(tmp_path / "b", tmp_path / "data", epochs=2, train_size=16, val_size=5,
                      **{"Global.max_num_latest_checkpoint": -1})
    r = run_tool("train", ["-c", cfg, "-o", "Global.max_train_step=6"])  # stops mid-epoch 2
    assert r.returncode == 0, r.stderr[-2000:]
    run = tmp_path / "b" / "out" / MODEL
    r = run_tool("train", ["-c", cfg, "-o", "Global.auto_resume=True"])
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"resuming from {run}/latest (epoch 1, step 6)" in r.stdout
    assert os.path.exists(run / "config.resume-1.yaml")  # max_train_step differs: kept alongside
    a, b = _params(str(tmp_path / "a" / "out" / MODEL / "latest")), _params(str(run / "latest"))
    assert all(np.array_equal(np.asarray(a[k]), np.asarray(b[k])) for k in a)
    # explicit Global.checkpoint wins over latest (which is complete): epoch_1 -> trains epoch 2
    r = run_tool("train", ["-c", cfg, "-o", "Global.auto_resume=True",
                           f"Global.checkpoint={run}/epoch_1"])
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"resuming from {run}/epoch_1 (Global.checkpoint)" in r.stdout
    assert "[Train][Epoch 2/2]" in r.stdout


def test_torn_latest_falls_back_to_backup(tmp_path):
    cfg = tiny_config(tmp_path, tmp_path / "data", epochs=2, train_size=16, val_size=5)
    r = run_tool("train", ["-c", cfg, "-o", "Global.max_train_step=4"])
    assert r.returncode == 0, r.stderr[-2000:]
    run = tmp_path / "out" / MODEL
    for ext in (".pdparams", ".pdopt", ".pdstates"):  # what a kill between renames leaves
        shutil.copyfile(run / f"latest{ext}", run / f".latest.bak{ext}")
    with open(run / "latest.pdparams", "ab") as f:
        f.write(b"torn")
    r = run_tool("train", ["-c", cfg, "-o", "Global.auto_resume=True"])
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"resuming from {run}/.latest.bak (epoch 1, step 4) (" in r.stdout
    os.remove(run / "latest.pdparams")
    for ext in (".pdparams", ".pdopt", ".pdstates"):
        if os.path.exists(run / f".latest.bak{ext}"):
            os.remove(run / f".latest.bak{ext}")
    r = run_tool("train", ["-c", cfg, "-o", "Global.auto_resume=True"])
    assert r.returncode != 0
    assert "and no complete backup" in _last_line(r)
