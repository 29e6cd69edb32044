"""The engine's training contract, each clause checked against a reference computed independently
of the engine, so that breaking any one of them fails a test:

- gradients are averaged, not summed, over accumulation micro-batches, processes and nodes
  (equivalences with clipping OFF, where a factor 2 is visible, not absorbed by the clip);
- the update applied is the globally clipped one (Delta_clipped = Delta * clip_norm / ||g||);
- optimizer step t (t = 0, 1, ...) uses lr(t) of the schedule's formula, written out here;
- every rank draws its own dropout masks, and continues its own stream after a resume;
- a run without Global.seed resumes with the seed recorded in its checkpoint.

The engine is driven through its stable surfaces only: tools/train.py (or the CLI entry point),
the checkpoint files it writes, and in-process through `run_engine` below (the one place that
names the Python API). Observations patch Paddle classes, never plsc internals.
"""
import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import paddle
import pytest

from tiny import ROOT, launch_two_nodes, run_tool, tiny_config, worker_logs

# Float32 noise between two runs that compute the same update in a different order: measured
# 5.6e-8 for accumulation, 2 processes and 2 nodes alike; ~10x that, while a factor-2 gradient
# error moves the weights by 0.16.
EQUIV_TOL = 6e-7


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return tmp_path_factory.mktemp("shapes")


# ---------------------------------------------------------------- the engine's surfaces (one place)
def run_engine(path, *overrides):
    """Train in this process from a config file plus `-o`-style overrides."""
    from plsc.config import get_config
    from plsc.engine import train

    train(get_config(path, list(overrides)))


def checkpoint_seed(prefix):
    """The seed a checkpoint set records (read from its .pdstates)."""
    from plsc.engine import checkpoint as ckpt

    return int(ckpt.load_states(str(prefix))["seed"])


def weights(run_dir, prefix="latest"):
    """The model weights a run saved, as float64 numpy arrays."""
    state = paddle.load(os.path.join(str(run_dir), "out", "VisionTransformer", prefix + ".pdparams"))
    return {k: np.asarray(v, dtype=np.float64) for k, v in state.items()}


def latest(run_dir):
    return os.path.join(str(run_dir), "out", "VisionTransformer", "latest")


def max_diff(a, b):
    assert a.keys() == b.keys()
    return max(float(np.abs(a[k] - b[k]).max()) for k in a)


# ---------------------------------------------------------------- gradient averaging
# No clipping, no weight decay, no warmup: the update is linear in the gradient, so a gradient
# summed where it should be averaged moves the weights like a doubled learning rate would.
UNCLIPPED = {"Optimizer": {"name": "Momentum", "momentum": 0.9, "weight_decay": 0.0,
                           "grad_clip": None},
             "LRScheduler.warmup_steps": 0, "Global.max_train_step": 3,
             "Global.eval_during_train": False}


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data_root):
    """Single process, batch 8: the run every equivalence is compared with; and the same run
    with the learning rate doubled, i.e. what a factor-2 gradient error produces."""
    root = tmp_path_factory.mktemp("reference")
    right = tiny_config(root / "right", data_root, batch_size=8, **UNCLIPPED)
    wrong = tiny_config(root / "wrong", data_root, batch_size=8, **UNCLIPPED)
    run_engine(right)
    run_engine(wrong, "LRScheduler.learning_rate=0.2")
    ref, doubled = weights(root / "right"), weights(root / "wrong")
    # the comparison can tell a factor 2: the doubled-gradient run is far outside the tolerance
    assert max_diff(ref, doubled) > 1000 * EQUIV_TOL
    return ref, doubled


def test_accumulation_averages_micro_batches_unclipped(tmp_path, data_root, reference):
    ref, doubled = reference
    path = tiny_config(tmp_path, data_root, batch_size=8, **dict(UNCLIPPED, **{
        "Global.accum_steps": 2}))
    run_engine(path)
    got = weights(tmp_path)
    assert max_diff(got, ref) <= EQUIV_TOL
    assert max_diff(got, doubled) > 1000 * EQUIV_TOL


def test_two_processes_average_gradients_unclipped(tmp_path, data_root, reference):
    ref, doubled = reference
    path = tiny_config(tmp_path, data_root, batch_size=4, **UNCLIPPED)
    r = run_tool("train", ["-c", path], nproc=2, log_dir=tmp_path / "logs")
    assert r.returncode == 0, r.stdout + r.stderr + worker_logs(tmp_path / "logs")
    got = weights(tmp_path)
    assert max_diff(got, ref) <= EQUIV_TOL
    assert max_diff(got, doubled) > 1000 * EQUIV_TOL


def test_two_nodes_average_gradients_unclipped(tmp_path, data_root, reference):
    ref, doubled = reference
    path = tiny_config(tmp_path, data_root, batch_size=4, **UNCLIPPED)
    assert launch_two_nodes(tmp_path, path) == [0, 0],         worker_logs(tmp_path / "log0") + worker_logs(tmp_path / "log1")
    got = weights(tmp_path)
    assert max_diff(got, ref) <= EQUIV_TOL
    assert max_diff(got, doubled) > 1000 * EQUIV_TOL


# ---------------------------------------------------------------- clipping
def test_applied_update_is_the_globally_clipped_one(tmp_path, data_root):
    """Plain SGD (momentum 0, no decay), one step at lr(0) = base: w1 = w0 - lr * g. Clipped to a
    global norm c < ||g||, the step must be the unclipped one scaled by c / ||g||, where ||g|| =
    ||w1 - w0|| / lr comes from the unclipped run (a relation between runs, not engine code)."""
    lr, clip_norm = 0.5, 0.05
    sgd = {"Optimizer": {"name": "Momentum", "momentum": 0.0, "weight_decay": 0.0,
                         "grad_clip": None},
           "LRScheduler.learning_rate": lr, "LRScheduler.warmup_steps": 0,
           "Global.max_train_step": 1, "Global.eval_during_train": False}
    run_engine(tiny_config(tmp_path / "init", data_root, **sgd), "LRScheduler.learning_rate=0.0")
    run_engine(tiny_config(tmp_path / "free", data_root, **sgd))
    sgd["Optimizer"] = dict(sgd["Optimizer"], grad_clip={"name": "ClipGradByGlobalNorm",
                                                          "clip_norm": clip_norm})
    run_engine(tiny_config(tmp_path / "clipped", data_root, **sgd))
    w0, free, clipped = weights(tmp_path / "init"), weights(tmp_path / "free"), \
        weights(tmp_path / "clipped")
    step = {k: free[k] - w0[k] for k in w0}
    grad_norm = math.sqrt(sum(float((v ** 2).sum()) for v in step.values())) / lr
    assert grad_norm > 10 * clip_norm, grad_norm  # the clip must bite, and hard
    expected = {k: w0[k] + step[k] * (clip_norm / grad_norm) for k in w0}
    # measured 4e-10 (float32 rounding of w0 - lr * g_clipped); a 1e-4 error in the clip
    # factor would show as ~2e-6
    assert max_diff(clipped, expected) <= 1e-8
    assert max_diff(clipped, free) > 1e-3  # what an unapplied clip would leave
    applied = math.sqrt(sum(float(((clipped[k] - w0[k]) ** 2).sum()) for k in w0)) / lr
    assert applied == pytest.approx(clip_norm, rel=1e-5)


# ---------------------------------------------------------------- learning rate per step
def vit_lr(t, base, warmup, total):
    """ViTLRScheduler, cosine (PLSC's formula, written independently of plsc.optim)."""
    progress = min(1.0, max(0.0, (t - warmup) / (total - warmup)))
    lr = 0.5 * base * (1.0 + math.cos(math.pi * progress))
    return lr * min(1.0, t / warmup) if warmup > 0 else lr


def test_each_optimizer_step_uses_the_schedule_from_step_0(tmp_path, data_root, monkeypatch):
    # 32 images, batch 4 in accum 2 micro-batches of 2: 8 optimizer steps per epoch
    # (16 micro-batches), 2 epochs
    base, warmup, epochs, steps_per_epoch = 0.1, 3, 2, 8
    path = tiny_config(tmp_path / "run", data_root, batch_size=4, epochs=epochs, **{
        "Global.accum_steps": 2, "Global.eval_during_train": False,
        "LRScheduler.learning_rate": base, "LRScheduler.warmup_steps": warmup})
    used = []
    real_step = paddle.optimizer.Momentum.step

    def recording_step(self, *args, **kwargs):
        used.append(float(self.get_lr()))
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(paddle.optimizer.Momentum, "step", recording_step)
    run_engine(path)
    monkeypatch.undo()
    total = epochs * steps_per_epoch
    assert len(used) == total  # one optimizer step per accum_steps micro-batches
    expected = [vit_lr(t, base, warmup, total) for t in range(total)]
    assert expected[0] == 0.0 and expected[warmup] == base
    assert np.abs(np.array(used) - expected).max() <= 1e-12


def test_first_step_under_warmup_leaves_the_weights_unchanged(tmp_path, data_root):
    """lr(0) = 0 with warmup: after one step the weights are bitwise those of a run at lr 0
    (SGD's update is lr * (g + wd * w), exactly zero at lr 0)."""
    cfg = {"Global.max_train_step": 1, "Global.eval_during_train": False,
           "LRScheduler.warmup_steps": 2}
    run_engine(tiny_config(tmp_path / "a", data_root, **cfg))
    run_engine(tiny_config(tmp_path / "b", data_root, **cfg), "LRScheduler.learning_rate=0.0")
    assert max_diff(weights(tmp_path / "a"), weights(tmp_path / "b")) == 0.0


# ---------------------------------------------------------------- per-rank RNG and resume
# Runs tools/train.py's entry point with nn.Dropout patched to record every mask it draws in
# training, saved per rank at exit.
DROPOUT_RECORDER = textwrap.dedent("""
    import atexit, os, sys
    import numpy as np
    import paddle

    masks = []
    real_forward = paddle.nn.Dropout.forward

    def forward(self, x):
        out = real_forward(self, x)
        if self.training:
            masks.append(((out == 0) & (x != 0)).numpy())
        return out

    paddle.nn.Dropout.forward = forward
    dump = sys.argv.pop(1)
    rank = os.environ.get("PADDLE_TRAINER_ID", "0")
    atexit.register(lambda: np.savez(f"{dump}.rank{rank}.npz", *masks))
    sys.path.insert(0, os.environ["PLSC_ROOT"])
    from plsc.cli.train import main
    main()
""")


def _launch_recording(script, dump, path, overrides, log_dir, nproc=2):
    cmd = [sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", str(nproc),
           "--log_dir", str(log_dir), str(script), str(dump), "-c", path]
    if overrides:
        cmd += ["-o", *overrides]
    env = dict(os.environ, PYTHONPATH=ROOT, PLSC_ROOT=ROOT)
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr + worker_logs(log_dir)
    masks = []
    for rank in range(nproc):
        with np.load(f"{dump}.rank{rank}.npz") as z:
            masks.append([z[f"arr_{i}"] for i in range(len(z.files))])
    return masks


def test_two_procs_accum_dropout_ranks_differ_and_resume_mid_epoch_is_exact(tmp_path, data_root):
    """2 processes x batch 4 in accum 2 micro-batches of 2 with dropout: 4 optimizer steps per epoch. Stop after 2
    (mid-epoch), resume to 6 (crossing into epoch 2): the weights equal the uninterrupted run's
    bitwise, every rank's dropout masks continue exactly where they stopped, and the two ranks
    never draw the same masks (each rank has its own RNG stream)."""
    script = tmp_path / "record_dropout.py"
    script.write_text(DROPOUT_RECORDER)
    cfg = {"Global.accum_steps": 2, "Model.drop_rate": 0.1, "Global.eval_during_train": False}
    full = tiny_config(tmp_path / "full", data_root, batch_size=4, **cfg)
    part = tiny_config(tmp_path / "part", data_root, batch_size=4, **cfg)
    m_full = _launch_recording(script, tmp_path / "full_masks", full, ["Global.max_train_step=6"],
                               tmp_path / "log_full")
    m_part = _launch_recording(script, tmp_path / "part_masks", part, ["Global.max_train_step=2"],
                               tmp_path / "log_part")
    m_res = _launch_recording(script, tmp_path / "res_masks", part,
                              [f"Global.checkpoint={latest(tmp_path / 'part')}",
                               "Global.max_train_step=6"], tmp_path / "log_res")

    assert max_diff(weights(tmp_path / "full"), weights(tmp_path / "part")) == 0.0
    n_calls = len(m_full[0])
    assert n_calls > 0 and len(m_full[1]) == n_calls
    for rank in (0, 1):  # each rank resumes its own stream
        assert len(m_part[rank]) + len(m_res[rank]) == n_calls
        for a, b in zip(m_part[rank] + m_res[rank], m_full[rank]):
            assert np.array_equal(a, b)
    # independent Bernoulli(0.1) masks disagree on ~18% of entries; identical streams on none
    for a, b in zip(m_full[0], m_full[1]):
        assert a.shape == b.shape and np.mean(a != b) > 0.05


SEEDLESS = {"Global.seed": None, "Model.drop_rate": 0.1, "Global.eval_during_train": False}


def test_seedless_run_resumes_with_its_checkpoint_seed(tmp_path, data_root):
    """Without Global.seed a run draws one; resumed with the config still seedless, it must
    carry on with the seed its checkpoint records (and record it again), not draw a new one."""
    path = tiny_config(tmp_path, data_root, **SEEDLESS)
    run_engine(path, "Global.max_train_step=2")
    seed = checkpoint_seed(latest(tmp_path))
    run_engine(path, f"Global.checkpoint={latest(tmp_path)}", "Global.max_train_step=3")
    assert checkpoint_seed(latest(tmp_path)) == seed


def test_seedless_resume_equals_an_uninterrupted_run_with_that_seed(tmp_path, data_root):
    """The resumed seedless run equals, bitwise, an uninterrupted run given the checkpoint's
    seed explicitly. 8 steps per epoch: stop at 3, resume to 11, crossing into epoch 2 whose
    shuffle depends on the seed (per-sample augmentation and dropout do throughout)."""
    part = tiny_config(tmp_path / "part", data_root, **SEEDLESS)
    run_engine(part, "Global.max_train_step=3")
    seed = checkpoint_seed(latest(tmp_path / "part"))
    run_engine(part, f"Global.checkpoint={latest(tmp_path / 'part')}", "Global.max_train_step=11")
    full = tiny_config(tmp_path / "full", data_root, **SEEDLESS)
    run_engine(full, f"Global.seed={seed}", "Global.max_train_step=11")
    assert max_diff(weights(tmp_path / "part"), weights(tmp_path / "full")) == 0.0
