"""Gradient clipping by ONE global norm over every parameter.

PLSC clipped each parameter group by its own norm (so the decay / no-decay split changed the
result); here one norm covers all parameters, as in the ViT papers. The engine calls the clip on
UNSCALED gradients (after the GradScaler's unscale) and before `optimizer.step()`; the paddle
optimizer itself is built without `grad_clip`.
"""
import paddle

from ..errors import ConfigError
from ..registry import Registry
from .lr import check_number

# Only one kind of clipping for now; a registry keeps the config form `{name: ..., ...}`
# uniform with the other components and gives "did you mean" errors.
GRAD_CLIPS = Registry("grad clip")


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

    def __init__(self, clip_norm: float):
        self.clip_norm = check_number("Optimizer.grad_clip.clip_norm", clip_norm, minimum=0.0,
                                      min_open=True)

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
    if cfg is None:
        return None
    if not isinstance(cfg, dict):
        raise ConfigError(
            f"Optimizer.grad_clip must be null or {{name: ClipGradByGlobalNorm, clip_norm: ...}},"
            f" got {cfg!r}")
    cfg = dict(cfg)
    cfg.setdefault("name", "ClipGradByGlobalNorm")
    return GRAD_CLIPS.build(cfg)
