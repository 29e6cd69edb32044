"""Learning-rate schedules, stepped once per OPTIMIZER step.

Every schedule here is a closed-form function lr(t) of t, the number of optimizer steps taken so
far (the lr used by the very first optimizer step is lr(0)). The engine calls
`scheduler.step()` after each `optimizer.step()`, so `last_epoch` (paddle's name) is t.
T = epochs * steps_per_epoch is the total number of optimizer steps, where steps_per_epoch
already accounts for gradient accumulation (it counts optimizer steps, not micro-batches).

Because lr(t) depends on nothing but t and the config, resuming is exact: `state_dict()` stores
t (`last_epoch`) and `set_state_dict()` recomputes the lr at t from the current config.

The schedules are registered in LR_SCHEDULERS under their config names. Their config keys are
checked by the config validator against the annotated signature; `total_steps`,
`steps_per_epoch` and `last_epoch` are runtime arguments (`runtime=` at registration), set by
build_lr_scheduler or on resume, never by the config.
"""
import math
from typing import Annotated, List, Literal

import paddle

from ..config import Rule, ge, gt
from ..errors import ConfigError
from ..registry import LR_SCHEDULERS

# --- base class ---

# set by build_lr_scheduler / resume, never by the config
RUNTIME_ARGS = ("total_steps", "steps_per_epoch", "last_epoch")


class StepLRScheduler(paddle.optimizer.lr.LRScheduler):
    """A paddle LRScheduler whose lr is a pure function `lr_at(t)` of the optimizer step t."""

    def __init__(self, learning_rate, total_steps, last_epoch=-1):
        self.total_steps = total_steps
        # paddle's constructor calls step(), which moves last_epoch from -1 to 0 and sets last_lr.
        super().__init__(learning_rate, last_epoch=last_epoch)

    def lr_at(self, t):
        raise NotImplementedError

    def get_lr(self):
        return float(self.lr_at(self.last_epoch))

    def set_state_dict(self, state_dict):
        """Restore the step count; the lr is recomputed from the CURRENT config at that step.

        With an unchanged config this equals the saved lr; with a changed one (e.g. more epochs
        on resume) the schedule continues as the new config says instead of a stale value.
        """
        super().set_state_dict(state_dict)
        self.last_epoch = int(self.last_epoch)
        self.last_lr = self.get_lr()

    set_dict = set_state_dict


LearningRate = Annotated[float, ge(0)]
WarmupSteps = Annotated[int, ge(0)]
NonNegative = Annotated[float, ge(0)]
Milestones = Annotated[List[Annotated[float, gt(0)]],
                       Rule("(increasing epochs)", lambda ms: all(a < b for a, b in zip(ms, ms[1:])))]


def _progress(t, start, end):
    """clip((t - start) / (end - start), 0, 1); 0 when there are no decay steps (end <= start):
    with warmup_steps >= T the lr simply stays in its warmup."""
    if end <= start:
        return 0.0
    return min(1.0, max(0.0, (t - start) / float(end - start)))


# --- schedules ---


@LR_SCHEDULERS.register(runtime=RUNTIME_ARGS)
class ViTLRScheduler(StepLRScheduler):
    """PLSC's ViT schedule (big_vision style), per optimizer step t, with w = warmup_steps:

        progress = clip((t - w) / (T - w), 0, 1)          (0 if T <= w)
        cosine:  lr = 0.5 * base * (1 + cos(pi * progress))
        linear:  lr = linear_end + (base - linear_end) * (1 - progress)
        then, if w > 0:  lr *= min(1, t / w)

    so lr(0) = 0 with warmup, lr(w) = base, lr(T) = 0 (cosine) or linear_end (linear).
    warmup_steps >= T is allowed: the lr then never leaves its linear warmup.
    """

    def __init__(self, learning_rate: LearningRate,
                 decay_type: Literal["cosine", "linear"] = "cosine", warmup_steps: WarmupSteps = 0,
                 linear_end: NonNegative = 1e-5, total_steps=1, steps_per_epoch=None,
                 last_epoch=-1):
        self.decay_type = decay_type
        self.warmup_steps = warmup_steps
        self.linear_end = linear_end
        super().__init__(learning_rate, total_steps, last_epoch)

    def lr_at(self, t):
        w, base = self.warmup_steps, self.base_lr
        progress = _progress(t, w, self.total_steps)
        if self.decay_type == "cosine":
            lr = 0.5 * base * (1.0 + math.cos(math.pi * progress))
        else:
            lr = self.linear_end + (base - self.linear_end) * (1.0 - progress)
        if w > 0:
            lr *= min(1.0, t / w)
        return lr


@LR_SCHEDULERS.register("Cosine", runtime=RUNTIME_ARGS)
@LR_SCHEDULERS.register(runtime=RUNTIME_ARGS)
class CosineWarmup(StepLRScheduler):
    """Per-step cosine decay to eta_min after a linear warmup from warmup_start_lr (w steps):

        t <  w:  lr = warmup_start_lr + (base - warmup_start_lr) * t / w
        t >= w:  lr = eta_min + 0.5 * (base - eta_min) * (1 + cos(pi * progress)),
                 progress = clip((t - w) / (T - w), 0, 1)   (0 if T <= w)

    Registered as `CosineWarmup` and `Cosine`. Epoch-free: everything is in optimizer steps.
    """

    def __init__(self, learning_rate: LearningRate, warmup_steps: WarmupSteps = 0,
                 warmup_start_lr: NonNegative = 0.0, eta_min: NonNegative = 0.0, total_steps=1,
                 steps_per_epoch=None, last_epoch=-1):
        self.warmup_steps = warmup_steps
        self.warmup_start_lr = warmup_start_lr
        self.eta_min = eta_min
        super().__init__(learning_rate, total_steps, last_epoch)

    def lr_at(self, t):
        w, base = self.warmup_steps, self.base_lr
        if t < w:
            return self.warmup_start_lr + (base - self.warmup_start_lr) * t / w
        progress = _progress(t, w, self.total_steps)
        return self.eta_min + 0.5 * (base - self.eta_min) * (1.0 + math.cos(math.pi * progress))


@LR_SCHEDULERS.register(runtime=RUNTIME_ARGS)
class TimmCosine(StepLRScheduler):
    """PLSC's TimmCosine (timm's CosineLRScheduler, as DeiT uses it). With decay_unit `epoch`
    the unit is x = e = t // steps_per_epoch (the lr changes once per epoch), T = epochs and
    W = warmup_epoch; with `step`, x = t, T = epochs * steps_per_epoch and
    W = round(warmup_epoch * steps_per_epoch):

        x <  W:  lr = warmup_start_lr + (base - warmup_start_lr) * x / W
        x >= W:  lr = eta_min + 0.5 * (base - eta_min) * (1 + cos(pi * p)),
                 p = clip(x / T, 0, 1), or clip((x - W) / (T - W), 0, 1) with warmup_prefix

    Without warmup_prefix the cosine runs over the whole run, warmup included (timm's default),
    so lr(W) is slightly below base. Not reproduced from PLSC: its scheduler is never
    initialized, so its first epoch runs at the full learning_rate and every later epoch e at
    lr(e - 1); here epoch e uses lr(e) from the first step on.
    """

    def __init__(self, learning_rate: LearningRate, eta_min: NonNegative = 0.0,
                 warmup_epoch: NonNegative = 0, warmup_start_lr: NonNegative = 0.0,
                 decay_unit: Literal["epoch", "step"] = "epoch", warmup_prefix: bool = False,
                 total_steps=1, steps_per_epoch=1, last_epoch=-1):
        self.eta_min, self.warmup_start_lr = eta_min, warmup_start_lr
        self.decay_unit, self.warmup_prefix = decay_unit, warmup_prefix
        self.steps_per_epoch = steps_per_epoch
        if decay_unit == "epoch":
            self.unit_total, self.unit_warmup = total_steps // steps_per_epoch, warmup_epoch
            # the first step whose epoch is past the warmup
            self.warmup_steps = math.ceil(warmup_epoch) * steps_per_epoch
        else:
            self.unit_total = total_steps
            self.unit_warmup = self.warmup_steps = int(round(warmup_epoch * steps_per_epoch))
        self.warmup_epoch = warmup_epoch
        super().__init__(learning_rate, total_steps, last_epoch)

    def warmup_key(self):
        return f"warmup_epoch ({self.warmup_epoch:g} = {self.warmup_steps} steps)"

    def lr_at(self, t):
        x = t // self.steps_per_epoch if self.decay_unit == "epoch" else t
        w, base = self.unit_warmup, self.base_lr
        if x < w:
            return self.warmup_start_lr + (base - self.warmup_start_lr) * x / w
        start = w if self.warmup_prefix else 0
        progress = _progress(x, start, self.unit_total)
        return self.eta_min + 0.5 * (base - self.eta_min) * (1.0 + math.cos(math.pi * progress))


@LR_SCHEDULERS.register(runtime=RUNTIME_ARGS)
class MultiStepWarmup(StepLRScheduler):
    """Warmup + step decay. Milestones are EPOCHS (converted with steps_per_epoch):

        decayed(t) = base * gamma ** (number of milestones m with t >= m * steps_per_epoch)
        t <  w:  lr = warmup_start_lr + (decayed(t) - warmup_start_lr) * t / w
        t >= w:  lr = decayed(t)
    """

    def __init__(self, learning_rate: LearningRate, milestones: Milestones,
                 gamma: NonNegative = 0.1, warmup_steps: WarmupSteps = 0,
                 warmup_start_lr: NonNegative = 0.0, total_steps=1, steps_per_epoch=1,
                 last_epoch=-1):
        self.milestone_steps = [int(round(m * steps_per_epoch)) for m in milestones]
        self.gamma = gamma
        self.warmup_steps = warmup_steps
        self.warmup_start_lr = warmup_start_lr
        super().__init__(learning_rate, total_steps, last_epoch)

    def lr_at(self, t):
        passed = sum(1 for m in self.milestone_steps if t >= m)
        decayed = self.base_lr * self.gamma ** passed
        w = self.warmup_steps
        if t < w:
            return self.warmup_start_lr + (decayed - self.warmup_start_lr) * t / w
        return decayed


@LR_SCHEDULERS.register(runtime=RUNTIME_ARGS)
class Constant(StepLRScheduler):
    """Constant lr after an optional linear warmup from 0: lr = base * min(1, t / w)."""

    def __init__(self, learning_rate: LearningRate, warmup_steps: WarmupSteps = 0, total_steps=1,
                 steps_per_epoch=None, last_epoch=-1):
        self.warmup_steps = warmup_steps
        super().__init__(learning_rate, total_steps, last_epoch)

    def lr_at(self, t):
        w = self.warmup_steps
        return self.base_lr * (min(1.0, t / w) if w > 0 else 1.0)


def scaled_learning_rate(lr_cfg: dict, global_batch):
    """(config without base_batch_size, one line saying the effective LR or None).

    With `base_batch_size: N`, `learning_rate` is per N images of global batch and the run uses
    learning_rate * global_batch / N (DeiT's rule, lr 5e-4 per 512; only the peak is scaled, as
    in DeiT: warmup start and floor are absolute)."""
    lr_cfg = dict(lr_cfg)
    base = lr_cfg.pop("base_batch_size", None)
    if base is None:
        return lr_cfg, None
    given = lr_cfg["learning_rate"]
    lr_cfg["learning_rate"] = given * global_batch / base
    return lr_cfg, (f"learning rate {lr_cfg['learning_rate']:.6g} = LRScheduler.learning_rate "
                    f"{given:g} x global batch {global_batch} / base_batch_size {base}")


def build_lr_scheduler(lr_cfg: dict, epochs: int, steps_per_epoch: int):
    """The scheduler for the `LRScheduler` config section.

    `epochs` is the validated Global.epochs (>= 1). steps_per_epoch counts OPTIMIZER steps
    (micro-batches // accum_steps) and is measured, not configured, so it is checked here;
    T = epochs * steps_per_epoch. Step the result once after every optimizer step.
    A base_batch_size still in lr_cfg is dropped: the engine applies it (scaled_learning_rate).
    """
    if steps_per_epoch < 1:
        raise ConfigError(f"steps_per_epoch: expected at least 1 optimizer step per epoch, got "
                          f"{steps_per_epoch} (fewer training batches than Global.accum_steps?)")
    lr_cfg = {k: v for k, v in lr_cfg.items() if k != "base_batch_size"}
    return LR_SCHEDULERS.build(lr_cfg, section="LRScheduler",
                               total_steps=epochs * steps_per_epoch,
                               steps_per_epoch=steps_per_epoch)


# --- what resuming or a config does to the schedule, said in one line (never silently) ---
def schedule_record(sched):
    """The schedule's shape, recorded in a checkpoint's states so a resume can tell what changed."""
    return {"total_steps": int(sched.total_steps),
            "warmup_steps": int(getattr(sched, "warmup_steps", 0) or 0)}


def schedule_change(saved, saved_lr, sched):
    """One line on how resuming with `sched` changes the schedule recorded as `saved`, or None
    when nothing changed or the checkpoint predates the record (nothing to compare with)."""
    if not saved:
        return None
    now = schedule_record(sched)
    changes = [f"{k.replace('_', ' ')} {saved[k]} -> {now[k]}"
               for k in now if k in saved and saved[k] != now[k]]
    if not changes:
        return None
    was = f"{saved_lr:.3g}" if saved_lr is not None else "unknown"
    return (f"LR schedule changed on resume: {', '.join(changes)}; lr at step "
            f"{sched.last_epoch} was {was}, now {sched.last_lr:.3g}")


def warmup_warning(sched):
    """One line when the warmup covers the whole run (the lr never reaches its base), else None."""
    w = int(getattr(sched, "warmup_steps", 0) or 0)
    if w == 0 or w < sched.total_steps:
        return None
    # a schedule whose warmup is configured in other units says so itself
    key = sched.warmup_key() if hasattr(sched, "warmup_key") else f"warmup_steps ({w})"
    return (f"LRScheduler.{key} >= the run's {sched.total_steps} steps: the whole "
            f"run is warmup, the lr never reaches LRScheduler.learning_rate ({sched.base_lr:g})")
