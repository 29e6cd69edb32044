"""Training runs through the engine's public entry points (get_config -> build_trainer -> run),
observed from outside: the loss of each micro-batch, the result of each optimizer step, and the
weights around a chosen step. The engine's log goes to the run's train.log only."""
import contextlib
import io

import numpy as np


def build(path, overrides=()):
    """The Trainer of config `path` (+ `-o`-style overrides); its log is kept off the console."""
    from ..config import get_config
    from ..engine import build_trainer

    with contextlib.redirect_stdout(io.StringIO()):
        return build_trainer(get_config(path, list(overrides)))


def params_snapshot(model):
    return {k: np.array(v.numpy(), copy=True) for k, v in model.state_dict().items()}


def train(trainer, around_step=None, on_step=None):
    """Run `trainer`; returns {'losses': [per micro-batch], 'steps': [StepResult], 'before',
    'after': weights around optimizer step `around_step` (1-based; None: not recorded)}.
    `on_step(step)` is called before each optimizer step's backward (to inject a fault)."""
    from ..engine import run

    record = {"losses": [], "steps": [], "before": None, "after": None}
    loss_fn, update = trainer.train_loss, trainer.optim.update

    def recording_loss(logits, labels):
        out = loss_fn(logits, labels)
        record["losses"].append(float(out["loss"]))
        return out

    def recording_update(loss):
        step = len(record["steps"]) + 1
        undo = on_step(step) if on_step else None
        if step == around_step:
            record["before"] = params_snapshot(trainer.model)
        result = update(loss)
        if undo:
            undo()
        if step == around_step:
            record["after"] = params_snapshot(trainer.model)
        if result is not None:
            record["steps"].append(result)
        return result

    trainer.train_loss, trainer.optim.update = recording_loss, recording_update
    with contextlib.redirect_stdout(io.StringIO()):
        run(trainer)
    return record


def max_abs_diff(a, b):
    """Largest |a - b| over the common keys of two {name: array} dicts (float64)."""
    if a.keys() != b.keys():
        raise ValueError(f"different tensors: {sorted(set(a) ^ set(b))[:5]}")
    return max(float(np.abs(np.asarray(a[k], np.float64) - np.asarray(b[k], np.float64)).max())
               for k in a)
