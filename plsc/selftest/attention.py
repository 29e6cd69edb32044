"""Attention: the fused path (`attn_impl: sdpa`, flash attention in half precision on GPU, the
model's default there) against the explicit math path, forward and backward, in every precision
this machine runs. Same weights, same input; compared: the logits and every parameter gradient.
"""
import numpy as np
import paddle

from ..engine.amp import FP32_OPS
from ..models import build_model
from . import hardware
from .result import skip, tolerance, within

# Max |difference| relative to the largest |value| of each tensor. fp32: the two paths sum in a
# different order (measured ~1e-7 on CPU); half: a few units of the format's rounding.
RTOL = {"float32": 1e-5, "float16": 1e-2, "bfloat16": 5e-2}
SHORT = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}
# 65 tokens, 4 heads of 16: small, but the kernels see several heads and a ragged length
MODEL = {"name": "VisionTransformer", "img_size": 32, "patch_size": 4, "embed_dim": 64,
         "depth": 2, "num_heads": 4, "class_num": 10}


def _forward_backward(impl, state, x, weight, dtype):
    paddle.seed(0)
    model = build_model(dict(MODEL, attn_impl=impl))
    model.set_state_dict(state)
    model.train()  # no dropout configured: train and eval compute the same
    if dtype == "float32":
        logits = model(x)
    else:
        with paddle.amp.auto_cast(level="O1", dtype=dtype, custom_black_list=FP32_OPS):
            logits = model(x)
    logits = logits.astype("float32")
    (logits * weight).sum().backward()
    grads = {n: p.grad.astype("float32").numpy() for n, p in model.named_parameters()}
    return logits.numpy(), grads


def _rel(a, b):
    return float(np.abs(a - b).max() / max(float(np.abs(b).max()), 1e-30))


def compare(dtype):
    """(forward rel diff, worst backward rel diff, its parameter name) of sdpa vs math."""
    paddle.seed(1)
    state = build_model(dict(MODEL, attn_impl="math")).state_dict()
    for key, value in state.items():  # the zero-initialised head would hide the forward
        if not value.abs().max():
            state[key] = paddle.randn(value.shape) * 0.02
    x = paddle.randn([4, 3, MODEL["img_size"], MODEL["img_size"]])
    weight = paddle.randn([4, MODEL["class_num"]])
    fast = _forward_backward("sdpa", state, x, weight, dtype)
    ref = _forward_backward("math", state, x, weight, dtype)
    fwd = _rel(fast[0], ref[0])
    name = max(ref[1], key=lambda k: _rel(fast[1][k], ref[1][k]))
    return fwd, _rel(fast[1][name], ref[1][name]), name


def check_attention(ctx):
    out = []
    for dtype in ("float32", "float16", "bfloat16"):
        name = f"attention sdpa vs math {SHORT[dtype]}"
        reason = None if dtype == "float32" else hardware.half_reason(dtype)
        if reason:
            out.append(skip(name, reason))
            continue
        fwd, bwd, param = compare(dtype)
        tol = tolerance(RTOL[dtype])
        where = f" ({param})" if bwd else ""
        cpu = "; on CPU Paddle's sdpa runs its math backend" if hardware.no_gpu_reason() else ""
        out.append(within(name, max(fwd, bwd), tol,
                          f"max rel diff: forward {fwd:.2g}, backward {bwd:.2g}{where}{cpu}"))
    return out

