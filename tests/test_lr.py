"""LR schedules: exact values against the formulas recomputed here with python math."""
import math
import re

import pytest

from plsc.errors import ConfigError
from plsc.optim import build_lr_scheduler
from plsc.registry import LR_SCHEDULERS


def lrs(sched, n):
    """The lr used by optimizer steps t = 0 .. n-1 (engine order: use lr, then step())."""
    out = []
    for _ in range(n):
        out.append(sched())
        sched.step()
    return out


def vit_ref(t, base, warmup, total, decay="cosine", end=1e-5):
    if total > warmup:
        progress = min(1.0, max(0.0, (t - warmup) / (total - warmup)))
    else:
        progress = 0.0
    if decay == "cosine":
        lr = 0.5 * base * (1 + math.cos(math.pi * progress))
    else:
        lr = end + (base - end) * (1 - progress)
    if warmup:
        lr *= min(1.0, t / warmup)
    return lr


def test_vit_cosine_matches_formula_with_warmup_boundary_and_end():
    # T = 3 epochs * 5 optimizer steps = 15, warmup 4
    s = build_lr_scheduler({"name": "ViTLRScheduler", "learning_rate": 0.1, "warmup_steps": 4},
                           epochs=3, steps_per_epoch=5)
    got = lrs(s, 18)
    want = [vit_ref(t, 0.1, 4, 15) for t in range(18)]
    assert got == pytest.approx(want, abs=1e-15)
    assert got[0] == 0.0                       # first step is at t=0: zero lr with warmup
    assert got[2] == pytest.approx(0.05)       # halfway through warmup
    assert got[4] == pytest.approx(0.1)        # warmup boundary: full base lr
    assert got[15] == pytest.approx(0.0, abs=1e-15) and got[17] == got[15]   # end and beyond


def test_vit_linear_matches_formula():
    cfg = {"name": "ViTLRScheduler", "learning_rate": 3e-3, "decay_type": "linear",
           "warmup_steps": 3, "linear_end": 1e-4}
    got = lrs(build_lr_scheduler(cfg, epochs=2, steps_per_epoch=6), 14)
    want = [vit_ref(t, 3e-3, 3, 12, "linear", 1e-4) for t in range(14)]
    assert got == pytest.approx(want, abs=1e-15)
    assert got[12] == pytest.approx(1e-4)


def test_vit_without_warmup_starts_at_base_and_int_lr_accepted():
    got = lrs(build_lr_scheduler({"name": "ViTLRScheduler", "learning_rate": 1}, 1, 4), 5)
    assert got == pytest.approx([vit_ref(t, 1.0, 0, 4) for t in range(5)], abs=1e-15)
    assert got[0] == 1.0


def test_vit_warmup_longer_than_training_stays_in_warmup():
    cfg = {"name": "ViTLRScheduler", "learning_rate": 0.2, "warmup_steps": 20}
    got = lrs(build_lr_scheduler(cfg, epochs=3, steps_per_epoch=5), 15)
    assert got == pytest.approx([0.2 * t / 20 for t in range(15)], abs=1e-15)


def test_cosine_warmup_and_alias():
    cfg = {"learning_rate": 0.5, "warmup_steps": 4, "warmup_start_lr": 0.1, "eta_min": 0.01}
    total = 12

    def ref(t):
        if t < 4:
            return 0.1 + (0.5 - 0.1) * t / 4
        p = min(1.0, (t - 4) / (total - 4))
        return 0.01 + 0.5 * (0.5 - 0.01) * (1 + math.cos(math.pi * p))

    for name in ("CosineWarmup", "Cosine"):
        got = lrs(build_lr_scheduler({"name": name, **cfg}, epochs=4, steps_per_epoch=3), 14)
        assert got == pytest.approx([ref(t) for t in range(14)], abs=1e-15)
    assert got[0] == pytest.approx(0.1) and got[4] == pytest.approx(0.5)
    assert got[12] == pytest.approx(0.01) and got[13] == pytest.approx(0.01)


def test_multistep_warmup_milestones_in_epochs():
    cfg = {"name": "MultiStepWarmup", "learning_rate": 0.8, "milestones": [2, 3], "gamma": 0.5,
           "warmup_steps": 4}
    spe = 5

    def ref(t):
        decayed = 0.8 * 0.5 ** sum(t >= m * spe for m in (2, 3))
        return decayed * t / 4 if t < 4 else decayed

    got = lrs(build_lr_scheduler(cfg, epochs=4, steps_per_epoch=spe), 20)
    assert got == pytest.approx([ref(t) for t in range(20)], abs=1e-15)
    assert got[9] == 0.8 and got[10] == 0.4 and got[15] == 0.2


def test_constant_with_warmup():
    got = lrs(build_lr_scheduler({"name": "Constant", "learning_rate": 0.3, "warmup_steps": 3},
                                 1, 6), 6)
    assert got == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.3, 0.3])


@pytest.mark.parametrize("cfg", [
    {"name": "ViTLRScheduler", "learning_rate": 0.1, "warmup_steps": 5},
    {"name": "CosineWarmup", "learning_rate": 0.1, "warmup_steps": 5, "eta_min": 1e-3},
    {"name": "MultiStepWarmup", "learning_rate": 0.1, "milestones": [1, 2], "warmup_steps": 2},
])
def test_state_dict_round_trip_equals_uninterrupted(cfg):
    uninterrupted = build_lr_scheduler(cfg, epochs=3, steps_per_epoch=6)
    want = lrs(uninterrupted, 18)

    first = build_lr_scheduler(cfg, epochs=3, steps_per_epoch=6)
    got = lrs(first, 7)
    state = first.state_dict()
    assert state["last_epoch"] == 7
    resumed = build_lr_scheduler(cfg, epochs=3, steps_per_epoch=6)
    resumed.set_state_dict(dict(state))
    assert resumed.last_epoch == 7
    assert resumed.get_lr() == resumed() == want[7]
    got += lrs(resumed, 11)
    assert got == want


def test_resume_with_longer_schedule_follows_new_config():
    cfg = {"name": "ViTLRScheduler", "learning_rate": 0.1}
    old = build_lr_scheduler(cfg, epochs=2, steps_per_epoch=5)
    lrs(old, 6)
    new = build_lr_scheduler(cfg, epochs=4, steps_per_epoch=5)
    new.set_state_dict(old.state_dict())
    assert new() == pytest.approx(vit_ref(6, 0.1, 0, 20))


def test_runtime_arguments_are_not_config_keys():
    for name in LR_SCHEDULERS.names():
        keys = set(LR_SCHEDULERS.parameters(name))
        assert not keys & {"total_steps", "steps_per_epoch", "last_epoch"}, name
    assert set(LR_SCHEDULERS.parameters("ViTLRScheduler")) == {
        "learning_rate", "decay_type", "warmup_steps", "linear_end"}
    with pytest.raises(ConfigError, match="^unknown key 'LRScheduler.total_steps'"):
        build_lr_scheduler({"name": "ViTLRScheduler", "learning_rate": 0.1, "total_steps": 3},
                           1, 1)


@pytest.mark.parametrize("cfg, message", [
    ({"name": "ViTLRScheduler", "learning_rate": 0.1, "warmup_steps": -1},
     "LRScheduler.warmup_steps: expected int >= 0, got int -1"),
    ({"name": "ViTLRScheduler", "learning_rate": 0.1, "decay_type": "cos"},
     "LRScheduler.decay_type: expected one of cosine, linear, got str 'cos'"),
    ({"name": "ViTLRScheduler", "learning_rate": -0.1},
     "LRScheduler.learning_rate: expected float >= 0, got float -0.1"),
    ({"name": "ViTLRScheduler", "learning_rate": "3e-3"},
     "LRScheduler.learning_rate: expected float >= 0, got str '3e-3'"),
    ({"name": "CosineWarmup", "learning_rate": 0.1, "warmup_steps": 1.5},
     "LRScheduler.warmup_steps: expected int >= 0, got float 1.5"),
    ({"name": "MultiStepWarmup", "learning_rate": 0.1, "milestones": [3, 2]},
     "LRScheduler.milestones: expected list of float > 0 (increasing epochs), got list [3, 2]"),
    ({"name": "ViTLRScheduler", "learning_rate": 0.1, "warmup_step": 5},
     "unknown key 'LRScheduler.warmup_step'; did you mean 'LRScheduler.warmup_steps'?"),
    ({"name": "VitLRScheduler", "learning_rate": 0.1}, "did you mean 'ViTLRScheduler'"),
])
def test_config_errors_are_one_line(cfg, message):
    with pytest.raises(ConfigError) as e:
        build_lr_scheduler(cfg, epochs=2, steps_per_epoch=3)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_zero_steps_per_epoch_is_a_config_error():
    with pytest.raises(ConfigError, match="steps_per_epoch"):
        build_lr_scheduler({"name": "ViTLRScheduler", "learning_rate": 0.1}, 2, 0)


# ---- learning rate given per base batch (DeiT's 5e-4 per 512), scaled to the run's global batch
def test_lr_per_base_batch_scales_with_devices_and_reaches_the_optimizer(tmp_path):
    from tests.tiny import run_tool, tiny_config, worker_logs

    lr_cfg = {"name": "Constant", "learning_rate": 0.05, "base_batch_size": 4}
    # 2 processes x batch 4 = global batch 8: lr 0.05 x 8 / 4 = 0.1
    path = tiny_config(tmp_path, tmp_path / "shapes", batch_size=4, **{
        "LRScheduler": lr_cfg, "Global.max_train_step": 2, "Global.eval_during_train": False})
    r = run_tool("train", ["-c", path], nproc=2, log_dir=tmp_path / "logs")
    assert r.returncode == 0, r.stderr + worker_logs(tmp_path / "logs")
    log = open(tmp_path / "out/VisionTransformer/train.log").read()
    assert ("learning rate 0.1 = LRScheduler.learning_rate 0.05 x global batch 8 / "
            "base_batch_size 4") in log
    # the per-step lines show the lr the optimizer steps used
    used = [float(m) for m in re.findall(r"\[Train\]\[Epoch.*?lr: ([0-9.e+-]+)", log)]
    assert len(used) == 2 and all(abs(v - 0.1) <= 1e-9 for v in used), log


def test_base_batch_size_is_validated(tmp_path):
    from plsc.config import get_config
    from tests.tiny import tiny_config

    path = tiny_config(tmp_path, tmp_path / "shapes", **{
        "LRScheduler": {"name": "Constant", "learning_rate": 0.05, "base_batch_size": 0}})
    with pytest.raises(ConfigError, match=r"^LRScheduler.base_batch_size: expected int >= 1 or null, "
                                          r"got int 0"):
        get_config(path)
