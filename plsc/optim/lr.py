"""Learning-rate schedules, stepped once per OPTIMIZER step.

Every schedule here is a closed-form function lr(t) of t, the number of optimizer steps taken so
far (the lr used by the very first optimizer step is lr(0)). The engine calls
`scheduler.step()` after each `optimizer.step()`, so `last_epoch` (paddle's name) is t.
T = epochs * steps_per_epoch is the total number of optimizer steps, where steps_per_epoch
already accounts for gradient accumulation (it counts optimizer steps, not micro-batches).

Because lr(t) depends on nothing but t and the config, resuming is exact: `state_dict()` stores
t (`last_epoch`) and `set_state_dict()` recomputes the lr at t from the current config.

The schedules are registered in LR_SCHEDULERS under their config names. Their constructors take
the config keys plus two runtime keywords (`total_steps`, `steps_per_epoch`) that are hidden from
the config-facing signature (see `config_signature`), so the validator never offers them as keys.
"""
import inspect
import math

import paddle

from ..errors import ConfigError
from ..registry import LR_SCHEDULERS


def config_signature(*runtime_args):
    """Decorator: hide `runtime_args` from the signature `Registry.parameters()` reads.

    Components built by the engine get runtime objects (a model, the step count, ...) that are
    not config keys; the config validator must neither offer nor accept them.
    """

    def decorator(obj):
        target = obj.__init__ if inspect.isclass(obj) else obj
        sig = inspect.signature(target)
        params = [p for n, p in sig.parameters.items() if n != "self" and n not in runtime_args]
        obj.__signature__ = sig.replace(parameters=params)
        return obj

    return decorator


# --- small validators shared by the optim modules (one-line ConfigErrors naming the key) ---


def check_number(key, value, minimum=None, maximum=None, min_open=False, max_open=False):
    """`value` as a float; ConfigError naming `key` unless it is a number in the range.

    Ints are accepted wherever floats are (YAML writes `weight_decay: 0`).
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{key} must be a number, got {value!r}")
    value = float(value)
    if math.isnan(value):
        raise ConfigError(f"{key} must be a number, got nan")
    too_low = minimum is not None and (value <= minimum if min_open else value < minimum)
    too_high = maximum is not None and (value >= maximum if max_open else value > maximum)
    if too_low or too_high:
        lo = "" if minimum is None else ("(" if min_open else "[") + f"{minimum:g}"
        hi = "" if maximum is None else f"{maximum:g}" + (")" if max_open else "]")
        if minimum is None:
            expected = f"{'<' if max_open else '<='} {maximum:g}"
        elif maximum is None:
            expected = f"{'>' if min_open else '>='} {minimum:g}"
        else:
            expected = f"in {lo}, {hi}"
        raise ConfigError(f"{key} must be {expected}, got {value:g}")
    return value


def check_int(key, value, minimum=None):
    """`value` as an int; ConfigError naming `key` unless it is an integer >= minimum."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{key} must be an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise ConfigError(f"{key} must be an integer >= {minimum}, got {value}")
    return value


def check_choice(key, value, choices):
    if value not in choices:
        raise ConfigError(f"{key} must be one of {', '.join(choices)}; got {value!r}")
    return value


# --- base class ---

# set by build_lr_scheduler / resume, never by the config
RUNTIME_ARGS = ("total_steps", "steps_per_epoch", "last_epoch")


class StepLRScheduler(paddle.optimizer.lr.LRScheduler):
    """A paddle LRScheduler whose lr is a pure function `lr_at(t)` of the optimizer step t."""

    def __init__(self, learning_rate, total_steps, last_epoch=-1):
        self.total_steps = check_int("total optimizer steps (epochs * steps_per_epoch)",
                                     total_steps, minimum=1)
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


def _warmup_steps(value):
    return check_int("LRScheduler.warmup_steps", value, minimum=0)


def _base_lr(value):
    return check_number("LRScheduler.learning_rate", value, minimum=0.0)


def _progress(t, start, end):
    """clip((t - start) / (end - start), 0, 1); 0 when there are no decay steps (end <= start):
    with warmup_steps >= T the lr simply stays in its warmup."""
    if end <= start:
        return 0.0
    return min(1.0, max(0.0, (t - start) / float(end - start)))


# --- schedules ---


@LR_SCHEDULERS.register()
@config_signature(*RUNTIME_ARGS)
class ViTLRScheduler(StepLRScheduler):
    """PLSC's ViT schedule (big_vision style), per optimizer step t, with w = warmup_steps:

        progress = clip((t - w) / (T - w), 0, 1)          (0 if T <= w)
        cosine:  lr = 0.5 * base * (1 + cos(pi * progress))
        linear:  lr = linear_end + (base - linear_end) * (1 - progress)
        then, if w > 0:  lr *= min(1, t / w)

    so lr(0) = 0 with warmup, lr(w) = base, lr(T) = 0 (cosine) or linear_end (linear).
    warmup_steps >= T is allowed: the lr then never leaves its linear warmup.
    """

    def __init__(self, learning_rate: float, decay_type: str = "cosine", warmup_steps: int = 0,
                 linear_end: float = 1e-5, *, total_steps, steps_per_epoch=None, last_epoch=-1):
        self.decay_type = check_choice("LRScheduler.decay_type", decay_type, ("cosine", "linear"))
        self.warmup_steps = _warmup_steps(warmup_steps)
        self.linear_end = check_number("LRScheduler.linear_end", linear_end, minimum=0.0)
        super().__init__(_base_lr(learning_rate), total_steps, last_epoch)

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


@LR_SCHEDULERS.register("Cosine")
@LR_SCHEDULERS.register()
@config_signature(*RUNTIME_ARGS)
class CosineWarmup(StepLRScheduler):
    """Per-step cosine decay to eta_min after a linear warmup from warmup_start_lr (w steps):

        t <  w:  lr = warmup_start_lr + (base - warmup_start_lr) * t / w
        t >= w:  lr = eta_min + 0.5 * (base - eta_min) * (1 + cos(pi * progress)),
                 progress = clip((t - w) / (T - w), 0, 1)   (0 if T <= w)

    Registered as `CosineWarmup` and `Cosine`. Epoch-free: everything is in optimizer steps.
    """

    def __init__(self, learning_rate: float, warmup_steps: int = 0, warmup_start_lr: float = 0.0,
                 eta_min: float = 0.0, *, total_steps, steps_per_epoch=None, last_epoch=-1):
        self.warmup_steps = _warmup_steps(warmup_steps)
        self.warmup_start_lr = check_number("LRScheduler.warmup_start_lr", warmup_start_lr,
                                            minimum=0.0)
        self.eta_min = check_number("LRScheduler.eta_min", eta_min, minimum=0.0)
        super().__init__(_base_lr(learning_rate), total_steps, last_epoch)

    def lr_at(self, t):
        w, base = self.warmup_steps, self.base_lr
        if t < w:
            return self.warmup_start_lr + (base - self.warmup_start_lr) * t / w
        progress = _progress(t, w, self.total_steps)
        return self.eta_min + 0.5 * (base - self.eta_min) * (1.0 + math.cos(math.pi * progress))


@LR_SCHEDULERS.register()
@config_signature(*RUNTIME_ARGS)
class MultiStepWarmup(StepLRScheduler):
    """Warmup + step decay. Milestones are EPOCHS (converted with steps_per_epoch):

        decayed(t) = base * gamma ** (number of milestones m with t >= m * steps_per_epoch)
        t <  w:  lr = warmup_start_lr + (decayed(t) - warmup_start_lr) * t / w
        t >= w:  lr = decayed(t)
    """

    def __init__(self, learning_rate: float, milestones: list, gamma: float = 0.1,
                 warmup_steps: int = 0, warmup_start_lr: float = 0.0, *, total_steps,
                 steps_per_epoch, last_epoch=-1):
        if not isinstance(milestones, (list, tuple)):
            raise ConfigError(
                f"LRScheduler.milestones must be a list of epochs, got {milestones!r}")
        ms = [check_number("LRScheduler.milestones", m, minimum=0.0, min_open=True)
              for m in milestones]
        if any(b <= a for a, b in zip(ms, ms[1:])):
            raise ConfigError(f"LRScheduler.milestones must be increasing, got {list(milestones)}")
        spe = check_int("steps_per_epoch", steps_per_epoch, minimum=1)
        self.milestone_steps = [int(round(m * spe)) for m in ms]
        self.gamma = check_number("LRScheduler.gamma", gamma, minimum=0.0)
        self.warmup_steps = _warmup_steps(warmup_steps)
        self.warmup_start_lr = check_number("LRScheduler.warmup_start_lr", warmup_start_lr,
                                            minimum=0.0)
        super().__init__(_base_lr(learning_rate), total_steps, last_epoch)

    def lr_at(self, t):
        passed = sum(1 for m in self.milestone_steps if t >= m)
        decayed = self.base_lr * self.gamma ** passed
        w = self.warmup_steps
        if t < w:
            return self.warmup_start_lr + (decayed - self.warmup_start_lr) * t / w
        return decayed


@LR_SCHEDULERS.register()
@config_signature(*RUNTIME_ARGS)
class Constant(StepLRScheduler):
    """Constant lr after an optional linear warmup from 0: lr = base * min(1, t / w)."""

    def __init__(self, learning_rate: float, warmup_steps: int = 0, *, total_steps,
                 steps_per_epoch=None, last_epoch=-1):
        self.warmup_steps = _warmup_steps(warmup_steps)
        super().__init__(_base_lr(learning_rate), total_steps, last_epoch)

    def lr_at(self, t):
        w = self.warmup_steps
        return self.base_lr * (min(1.0, t / w) if w > 0 else 1.0)


def build_lr_scheduler(lr_cfg: dict, epochs: int, steps_per_epoch: int):
    """The scheduler for the `LRScheduler` config section.

    steps_per_epoch counts OPTIMIZER steps (micro-batches // accum_steps); T = epochs *
    steps_per_epoch. Step the result once after every optimizer step.
    """
    epochs = check_int("Global.epochs", epochs, minimum=1)
    steps_per_epoch = check_int("steps_per_epoch (optimizer steps per epoch)", steps_per_epoch,
                                minimum=1)
    return LR_SCHEDULERS.build(lr_cfg, total_steps=epochs * steps_per_epoch,
                               steps_per_epoch=steps_per_epoch)
