"""TimmCosine (PLSC's DeiT schedule) against timm's formula re-derived here with python math."""
import math

import pytest

from plsc.errors import ConfigError
from plsc.optim import build_lr_scheduler
from plsc.optim.lr import schedule_change, schedule_record
from test_lr import lrs


def timm_cosine(x, base, eta_min, warmup, warmup_lr, total, prefix=False):
    """timm CosineLRScheduler(t_initial=total, lr_min=eta_min, warmup_t=warmup,
    warmup_lr_init=warmup_lr, warmup_prefix=prefix) at t = x, one cycle."""
    if x < warmup:
        return warmup_lr + x * (base - warmup_lr) / warmup
    if prefix:
        x, total = x - warmup, total - warmup
    if x >= total:
        return eta_min
    return eta_min + 0.5 * (base - eta_min) * (1 + math.cos(math.pi * x / total))


CFG = {"name": "TimmCosine", "learning_rate": 1e-3, "eta_min": 1e-5, "warmup_epoch": 2,
       "warmup_start_lr": 1e-6}


def test_epoch_unit_changes_once_per_epoch_and_follows_timm():
    # 6 epochs x 3 steps: every step of epoch e uses timm's lr(e)
    got = lrs(build_lr_scheduler(dict(CFG, decay_unit="epoch"), 6, 3), 18)
    want = [timm_cosine(t // 3, 1e-3, 1e-5, 2, 1e-6, 6) for t in range(18)]
    assert got == pytest.approx(want, rel=1e-12, abs=0)
    assert got[0] == pytest.approx(1e-6)  # the first epoch is at warmup_start_lr, not at base
    assert got[3] == pytest.approx(1e-6 + (1e-3 - 1e-6) / 2)
    # after warmup the cosine runs over all 6 epochs (warmup included): lr(2) is below base
    assert got[6] == pytest.approx(1e-5 + 0.5 * (1e-3 - 1e-5) * (1 + math.cos(math.pi / 3)))
    assert len(set(got)) == 6


def test_step_unit_follows_timm_in_steps():
    # warmup 2 epochs x 3 steps = 6 steps of T = 18
    got = lrs(build_lr_scheduler(dict(CFG, decay_unit="step"), 6, 3), 19)
    want = [timm_cosine(t, 1e-3, 1e-5, 6, 1e-6, 18) for t in range(19)]
    assert got == pytest.approx(want, rel=1e-12, abs=0)
    assert got[-1] == pytest.approx(1e-5) and len(set(got[:18])) == 18


def test_fractional_warmup_epochs_round_to_steps_and_warmup_prefix():
    cfg = dict(CFG, decay_unit="step", warmup_epoch=0.5, warmup_prefix=True)
    got = lrs(build_lr_scheduler(cfg, 4, 5), 20)  # warmup round(2.5) = 2 steps of 20
    want = [timm_cosine(t, 1e-3, 1e-5, 2, 1e-6, 20, prefix=True) for t in range(20)]
    assert got == pytest.approx(want, rel=1e-12, abs=0)
    assert got[2] == pytest.approx(1e-3)  # with the prefix the cosine starts at base


def test_published_deit_defaults_decay_unit_epoch():
    sched = build_lr_scheduler({"name": "TimmCosine", "learning_rate": 1e-3}, 3, 2)
    assert sched.decay_unit == "epoch"
    assert lrs(sched, 6) == pytest.approx([timm_cosine(t // 2, 1e-3, 0, 0, 0, 3)
                                           for t in range(6)])


@pytest.mark.parametrize("unit", ["epoch", "step"])
def test_resume_mid_epoch_equals_uninterrupted_and_records_the_warmup(unit):
    cfg = dict(CFG, decay_unit=unit)
    want = lrs(build_lr_scheduler(cfg, 5, 4), 20)
    first = build_lr_scheduler(cfg, 5, 4)
    got = lrs(first, 7)  # stop inside epoch 2
    resumed = build_lr_scheduler(cfg, 5, 4)
    resumed.set_state_dict(dict(first.state_dict()))
    got += lrs(resumed, 13)
    assert got == want
    assert schedule_record(resumed) == {"total_steps": 20, "warmup_steps": 8}
    assert schedule_change(schedule_record(first), first(), resumed) is None


@pytest.mark.parametrize("cfg, message", [
    (dict(CFG, decay_unit="iter"), "decay_unit"),
    (dict(CFG, warmup_epoch=-1), "warmup_epoch"),
    (dict(CFG, warmup_epochs=5), "warmup_epochs"),
])
def test_config_errors_are_one_line(cfg, message):
    with pytest.raises(ConfigError, match=message) as e:
        build_lr_scheduler(cfg, 3, 2)
    assert "\n" not in str(e.value)
