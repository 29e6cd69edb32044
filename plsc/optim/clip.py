"""Gradient clipping by ONE global norm over every parameter.

PLSC clipped each parameter group by its own norm (so the decay / no-decay split changed the
result); here one norm covers all parameters, as in the ViT papers. The engine calls the clip on
UNSCALED gradients (after the GradScaler's unscale) and before `optimizer.step()`; the paddle
optimizer itself is built without `grad_clip`.
"""
from typing import Annotated

import paddle

from ..config import gt
from ..registry import GRAD_CLIPS


# Only one kind of clipping for now; a registry keeps the config form `{name: ..., ...}`
# uniform with the other components and gives "did you mean" errors.
@GRAD_CLIPS.register()
class ClipGradByGlobalNorm:
    """`clip(params) -> total_norm`: scale all grads in place by clip_norm / total_norm when
    total_norm > clip_norm, where total_norm = sqrt(sum over params of sum(grad ** 2)).

    The norm is accumulated in float32 even for fp16/bf16 grads (squares of fp16 values overflow
    and lose precision). Params without a grad are skipped. A non-finite norm (fp16 overflow)
    leaves the grads untouched: the GradScaler will skip that step anyway, and scaling by
    clip/inf would turn every grad into zeros or NaN.

    `params` is an iterable of parameters, or of paddle-style groups ({'params': [...]}) whose
    parameters are then all clipped together.
    """

    def __init__(self, clip_norm: Annotated[float, gt(0)]):
        self.clip_norm = clip_norm

    @staticmethod
    def _grads(params):
        grads = []
        for p in params:
            if isinstance(p, dict):
                grads.extend(ClipGradByGlobalNorm._grads(p["params"]))
                continue
            g = p.grad
            if g is not None:
                grads.append(g)
        return grads

    @paddle.no_grad()
    def __call__(self, params):
        grads = self._grads(params)
        if not grads:
            return 0.0
        sq = [paddle.sum(paddle.square(g.astype("float32"))) for g in grads]
        total = float(paddle.sqrt(paddle.add_n(sq)).item())
        if total > self.clip_norm and total < float("inf"):
            scale = self.clip_norm / total
            for g in grads:
                g.scale_(scale)
        return total

    def __repr__(self):
        return f"ClipGradByGlobalNorm(clip_norm={self.clip_norm:g})"


def build_grad_clip(cfg):
    """None (no clipping) or the clip callable for `Optimizer.grad_clip`."""
    return None if cfg is None else GRAD_CLIPS.build(cfg, section="Optimizer.grad_clip")
