"""Gradient clipping by ONE global norm over every parameter.

PLSC clipped each parameter group by its own norm (so the decay / no-decay split changed the
result); here one norm covers all parameters, as in the ViT papers. The engine calls the clip on
UNSCALED gradients (after the GradScaler's unscale) and before `optimizer.step()`; the paddle
optimizer itself is built without `grad_clip`.

Everything stays on the device: the norm is returned as a 0-d float32 tensor and the clip
coefficient min(1, clip_norm / norm) is applied without reading the norm on the host (the engine
makes one host read per optimizer step, of its skip flag: see plsc/engine/optim_wrapper.py).
"""
from typing import Annotated

import paddle

from ..config import gt
from ..registry import GRAD_CLIPS


def grads_of(params):
    """The existing gradients of `params`: parameters, or paddle groups ({'params': [...]})."""
    grads = []
    for p in params:
        if isinstance(p, dict):
            grads.extend(grads_of(p["params"]))
        elif p.grad is not None:
            grads.append(p.grad)
    return grads


@paddle.no_grad()
def global_norm(grads):
    """sqrt(sum of squared gradients) as a 0-d float32 device tensor (no host read), accumulated
    in float32 even for fp16/bf16 gradients (their squares overflow and lose precision)."""
    if not grads:
        return paddle.zeros([], dtype="float32")
    sq = [paddle.sum(paddle.square(g.astype("float32"))) for g in grads]
    return paddle.sqrt(paddle.add_n(sq))


# Only one kind of clipping for now; a registry keeps the config form `{name: ..., ...}`
# uniform with the other components and gives "did you mean" errors.
@GRAD_CLIPS.register()
class ClipGradByGlobalNorm:
    """`clip(params) -> total_norm`: scale all grads in place by clip_norm / total_norm when
    total_norm > clip_norm, where total_norm = sqrt(sum over params of sum(grad ** 2)) is
    returned as a 0-d float32 device tensor (`global_norm`).

    Params without a grad are skipped. A non-finite norm (fp16 overflow) leaves the grads
    untouched (coefficient 1): the GradScaler will skip that step anyway, and scaling by
    clip/inf would turn every grad into zeros or NaN.

    `params` is an iterable of parameters, or of paddle-style groups ({'params': [...]}) whose
    parameters are then all clipped together.
    """

    def __init__(self, clip_norm: Annotated[float, gt(0)]):
        self.clip_norm = clip_norm

    @paddle.no_grad()
    def __call__(self, params):
        """Clips in place; returns the global norm before clipping (a 0-d float32 tensor)."""
        grads = grads_of(params)
        total = global_norm(grads)
        if not grads:
            return total
        # clip_norm / total divided in float64 and rounded once to float32, as a host clip does
        # (python division, then scale_): bitwise the same clipped gradients, no host read
        norm64 = total.astype("float64")
        ratio = (paddle.full([], self.clip_norm, "float64") / norm64).astype("float32")
        clips = paddle.logical_and(norm64 > self.clip_norm, paddle.isfinite(norm64))
        coef = paddle.where(clips, ratio, paddle.ones([], "float32"))
        for g in grads:
            if g.dtype == paddle.float32:
                g.multiply_(coef)
            else:  # fp16/bf16 (O2): scaled in float32, rounded once (no fp16 multiply on CPU)
                paddle.assign((g.astype("float32") * coef).astype(g.dtype), output=g)
        return total

    def __repr__(self):
        return f"ClipGradByGlobalNorm(clip_norm={self.clip_norm:g})"


def build_grad_clip(cfg):
    """None (no clipping) or the clip callable for `Optimizer.grad_clip`."""
    return None if cfg is None else GRAD_CLIPS.build(cfg, section="Optimizer.grad_clip")
