"""Mixed precision (FP16 section) with paddle.amp, guarded for CPU-only Paddle.

GPU semantics (Paddle's documented AMP):
- O1: ops on the white list run in fp16/bf16 under `auto_cast`, parameters stay fp32.
- O2: `paddle.amp.decorate` casts parameters to fp16/bf16 except norm layers, the optimizer keeps
  fp32 master weights (multi_precision) and checkpoints are saved in fp32 (save_dtype).
- softmax and layer_norm are always forced to fp32 (black list): fp16 attention softmax overflows.
- float16 uses dynamic loss scaling (GradScaler); steps whose grads hold inf/nan are skipped and
  the scale is lowered. bfloat16 has fp32's range, so no scaling.
On a CPU-only build these APIs are silent no-ops (measured), so we say so once and train in fp32.
"""
import contextlib

import numpy as np
import paddle

# Ops kept in fp32 whatever the level: numerically fragile in half precision.
FP32_OPS = ["softmax", "layer_norm", "reduce_mean", "mean", "log_softmax",
            "sigmoid_cross_entropy_with_logits", "cross_entropy_with_softmax"]


def gpu_available():
    return paddle.is_compiled_with_cuda() and paddle.device.cuda.device_count() > 0


class Amp:
    """What the training step needs to know about precision: a context, a scaler, and flags."""

    def __init__(self, level="O0", dtype="float16", scaler=None, white=(), black=()):
        self.level = level
        self.dtype = dtype
        self.scaler = scaler
        self._white = list(white)
        self._black = list(black)

    @property
    def enabled(self):
        return self.level in ("O1", "O2")

    def autocast(self):
        if not self.enabled:
            return contextlib.nullcontext()
        return paddle.amp.auto_cast(level=self.level, dtype=self.dtype,
                                    custom_white_list=self._white,
                                    custom_black_list=FP32_OPS + self._black)

    def state_dict(self):
        return self.scaler.state_dict() if self.scaler is not None else {}

    def set_state_dict(self, state):
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)


def loss_scale(scaler):
    """The current loss scale (None without a scaler), read through the public state_dict."""
    state = scaler.state_dict() if scaler is not None else {}
    return float(np.asarray(state["scale"]).reshape(-1)[0]) if "scale" in state else None


def for_eval(fp16_cfg):
    """Precision for evaluation: autocast only (no scaler, no decorated optimizer)."""
    level = (fp16_cfg or {}).get("level", "O0")
    if level in ("O1", "O2") and gpu_available():
        return Amp(level, fp16_cfg.get("dtype", "float16"))
    return Amp()


def setup(fp16_cfg, model, optimizer, logger):
    """Returns (model, optimizer, Amp). Decorates for O2; warns once and disables on CPU."""
    level = (fp16_cfg or {}).get("level", "O0")
    if level not in ("O1", "O2"):
        return model, optimizer, Amp()
    if not gpu_available():
        logger.warning(f"FP16.level={level} needs a GPU build of Paddle with a visible GPU; "
                       "AMP is off and this run trains in fp32")
        return model, optimizer, Amp()
    dtype = fp16_cfg.get("dtype", "float16")
    if level == "O2":
        model, optimizer = paddle.amp.decorate(models=model, optimizers=optimizer, level="O2",
                                               dtype=dtype, master_weight=True,
                                               save_dtype="float32")
    scaler = None
    if dtype == "float16":
        gs = dict(fp16_cfg.get("GradScaler") or {})
        scaler = paddle.amp.GradScaler(**gs)
    scale = loss_scale(scaler)
    logger.info(f"AMP {level} {dtype}" + (f", loss scale {scale:g}" if scale is not None else ""))
    return model, optimizer, Amp(level, dtype, scaler, fp16_cfg.get("fp16_custom_white_list", ()),
                                 fp16_cfg.get("fp16_custom_black_list", ()))
