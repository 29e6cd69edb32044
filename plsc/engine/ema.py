"""Weight EMA (the `EMA` config section, PLSC's keys): a float32 shadow of the trainable
parameters, updated after every optimizer step that changed the weights.

    shadow <- d * shadow + (1 - d) * weights,   d = min(decay, (1 + n) / (10 + n)) with
                                                thres_steps, else decay; n = updates so far

- Only applied steps count: a skipped step (non-finite gradients, fp16 overflow) leaves the
  weights as they were, so averaging them in again would over-weight them (and advance n).
- The shadow is float32 whatever the training precision. Under FP16 O2 the parameters are
  fp16 and the optimizer keeps fp32 master weights: the shadow averages the masters (the
  fp16 copies are rounded), else the parameters cast to fp32.
- Trainable parameters only. Frozen parameters and buffers (a ViT has no buffers that matter)
  are not averaged: the `.pdema` file takes them from the model as they are when it is saved.

On disk (checkpoint.py): `<prefix>.pdema` is a plain fp32 model state dict, the model's
`.pdparams` keys with the shadow in place of the trainable parameters, so it loads wherever a
`.pdparams` does (`-o Global.pretrained_model=.../best_model.pdema`). The update count n lives
in `.pdstates` (`ema_updates`).
"""
import contextlib
from dataclasses import dataclass

import numpy as np
import paddle

from ..errors import ConfigError
from . import sharding_stage3


@dataclass
class Ema:
    decay: float
    thres_steps: bool
    shadow: dict  # structured parameter name -> float32 Tensor
    updates: int = 0  # applied optimizer steps averaged in so far


def trainable(model):
    return [(n, p) for n, p in model.named_parameters() if not p.stop_gradient]


def _master_weights(optimizer):
    """{paddle param name: fp32 master tensor} that this rank holds; empty unless O2
    multi-precision keeps them. Under ZeRO stages 1 and 2 only the parameters this rank owns
    have one here (the owner updates them, then broadcasts the new fp16 weights)."""
    if optimizer is None:
        return {}
    return optimizer.state_dict().get("master_weights") or {}


def _fp32_sources(model, optimizer):
    """{name: the fp32 values the shadow averages}: the master weight where this rank has one,
    else the parameter cast to fp32. Under ZeRO sharding with O2 that is correct for the
    parameters another rank owns: after the sharded step the owner broadcasts the updated
    weights, so every rank holds them, rounded to fp16 (the shadow on rank 0, which is saved,
    averages those as they are; exact fp32 would need every master gathered every step)."""
    masters = _master_weights(optimizer)
    out = {}
    for name, p in trainable(model):
        w = masters.get(p.name)
        if w is None:
            w = p if p.dtype == paddle.float32 else p.astype("float32")
        out[name] = w
    return out


@paddle.no_grad()
def build(ema_cfg, model, optimizer=None):
    """An Ema over `model` starting from its current weights, or None when EMA is off (no
    EMA.decay). Call it after the weights are loaded (pretrained or resumed)."""
    if ema_cfg is None or ema_cfg.get("decay") is None:
        return None
    if sharding_stage3.is_stage3(optimizer):
        raise ConfigError("EMA.decay: EMA averages whole weights, which ZeRO "
                          "DistributedStrategy.sharding.sharding_stage 3 keeps on no rank; use "
                          "sharding_stage 1 or 2 with EMA")
    if ema_cfg.get("best_model") == "ema" and not ema_cfg.get("ema_eval", True):
        raise ConfigError("EMA.best_model=ema needs EMA.ema_eval: true (best_model is chosen "
                          "by the EMA weights' evaluation)")
    shadow = {n: w.astype("float32").clone() for n, w in _fp32_sources(model, optimizer).items()}
    return Ema(float(ema_cfg["decay"]), bool(ema_cfg.get("thres_steps", True)), shadow)


def current_decay(ema):
    n = ema.updates
    return min(ema.decay, (1 + n) / (10 + n)) if ema.thres_steps else ema.decay


@paddle.no_grad()
def update(ema, model, optimizer=None):
    """Average the weights of an applied optimizer step into the shadow; returns the decay."""
    d = current_decay(ema)
    for name, w in _fp32_sources(model, optimizer).items():
        ema.shadow[name] = ema.shadow[name] * d + w * (1.0 - d)
    ema.updates += 1
    return d


def shadow_arrays(ema):
    """{name: float32 numpy array} of the shadow (for the .pdema file)."""
    return {n: np.asarray(t.numpy(), dtype=np.float32) for n, t in ema.shadow.items()}


def load(ema, state, updates, source):
    """Put a saved shadow (a .pdema state dict) and its update count back into `ema`."""
    missing = [n for n in ema.shadow if n not in state]
    wrong = [n for n in ema.shadow
             if n in state and tuple(np.shape(state[n])) != tuple(ema.shadow[n].shape)]
    if missing or wrong:
        raise ConfigError(f"{source}: the EMA weights do not fit the model "
                          f"(missing: {', '.join(missing[:5]) or 'none'}; "
                          f"shape differs: {', '.join(wrong[:5]) or 'none'})")
    for n in ema.shadow:
        ema.shadow[n] = paddle.to_tensor(np.ascontiguousarray(state[n], dtype=np.float32))
    ema.updates = int(updates)


@contextlib.contextmanager
def applied(ema, model):
    """The model holds the EMA weights inside the block and exactly its own weights after it
    (evaluation of the EMA weights without a second model in memory)."""
    params = dict(trainable(model))
    with paddle.no_grad():
        saved = {n: p.clone() for n, p in params.items()}
        for n, p in params.items():
            p.set_value(ema.shadow[n].astype(p.dtype))
    try:
        yield model
    finally:
        with paddle.no_grad():
            for n, p in params.items():
                p.set_value(saved[n])


def eval_due(ema_cfg, epoch):
    """Whether an evaluation during epoch `epoch` (1-based, as logged) covers the EMA weights."""
    return bool(ema_cfg.get("ema_eval", True)) and epoch >= ema_cfg.get("eval_start_epoch", 0)
