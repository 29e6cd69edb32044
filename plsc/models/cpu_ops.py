"""CPU training paths for the ViT's Linear, LayerNorm, GELU and attention softmax.

Measured on a 2-core AMD EPYC, ViT-Ti/16 at batch 32 (tokens [32, 197, 192], MLP 768), Paddle
3.3.1: same-shape element-wise ops and BLAS products are fast, but ops that broadcast a row or
column vector run at 0.7-2.5 ms per 1.2M floats, the bias-gradient column reduction at ~0.4
GFLOP/s, LayerNorm's backward kernel takes 10-12 ms per call, GELU forward + backward 14 ms at
[32, 197, 768] and softmax ~8 ms on the scores, partly single-threaded. So, in training:

- `Linear`: the bias is added inside the GEMM (`addmm`); its gradient is ones[1, M] @ dy.
- `LayerNorm`: the forward output is Paddle's own kernel's (bit-identical to nn.LayerNorm); the
  backward is the compiled kernel's (cpu_kernels.cc, one pass per row, ~1-2 ms), or without a
  compiler the same formula written as GEMMs against ones and same-shape ops (~4 ms).
- `gelu`, `scaled_softmax` (softmax(scale * scores) in one pass): the compiled kernels.
All equal float64 numpy results within float32 noise (tests/test_speed_paths.py,
tests/test_cpu_kernels.py). They apply in float32 dygraph training mode on CPU without autocast,
with gradients on or off (recompute's gradient-free first pass must compute what its second pass
computes); everywhere else (GPU, eval, to_static, AMP) the layers are exactly Paddle's.
"""
import paddle
import paddle.nn as nn
import paddle.nn.functional as F
from paddle.autograd import PyLayer

from . import cpu_kernels


def _cpu_training(layer):
    # Gradients on or off alike: recompute runs the forward once without gradients and again
    # with them, and both passes must compute the same values. The device is asked of paddle,
    # not of the input: under to_static the input is a graph value whose `place` only warns
    # (and the static graph never takes this path anyway).
    return (layer.training and paddle.in_dynamic_mode() and paddle.get_device() == "cpu"
            and not paddle.amp.is_autocast_enabled())  # autocast: mixed-dtype gradients


def _kernels_apply(layer, x):
    return _cpu_training(layer) and x.dtype == paddle.float32 and cpu_kernels.available()


def gelu(layer, x, approximate=False):
    """F.gelu(x, approximate), through the compiled kernel when `layer` trains on CPU."""
    if not approximate and _kernels_apply(layer, x):
        return cpu_kernels.gelu(x)
    return F.gelu(x, approximate=approximate)


def scaled_softmax(layer, x, scale):
    """softmax(x * scale) over the last axis, through the compiled kernel when `layer` trains
    on CPU (one pass instead of a scale and a softmax)."""
    if scale > 0 and _kernels_apply(layer, x):
        return cpu_kernels.scaled_softmax(x, scale)
    return F.softmax(x * scale, axis=-1)


def _expand_rows(col, width):
    """[N, 1] -> [N, width] as the product col @ ones[1, width]."""
    return paddle.matmul(col, paddle.ones([1, width], col.dtype))


def _row_means(x2):
    """Mean of each row of [N, D] as the product x2 @ (1/D)[D, 1]."""
    d = x2.shape[-1]
    return paddle.matmul(x2, paddle.full([d, 1], 1.0 / d, x2.dtype))


def _column_sums(x2):
    """Sum over the rows of [N, D] as ones[1, N] @ x2, shape [D]."""
    return paddle.matmul(paddle.ones([1, x2.shape[0]], x2.dtype), x2).reshape([-1])


class _LinearCPU(PyLayer):
    """x @ W + b; the weight and input gradients are the two products Paddle's matmul-grad
    computes anyway, the bias gradient a third one."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        ctx.needs = (not x.stop_gradient, not weight.stop_gradient, not bias.stop_gradient)
        x2 = x.reshape([-1, x.shape[-1]])
        y = paddle.addmm(bias.reshape([1, -1]), x2, weight)
        return y.reshape([*x.shape[:-1], weight.shape[1]])

    @staticmethod
    def backward(ctx, dy):
        x, weight = ctx.saved_tensor()
        need_x, need_w, need_b = ctx.needs
        dy2 = dy.reshape([-1, dy.shape[-1]])
        dx = paddle.matmul(dy, weight, transpose_y=True) if need_x else None
        dw = (paddle.matmul(x.reshape([-1, x.shape[-1]]), dy2, transpose_x=True)
              if need_w else None)
        db = _column_sums(dy2) if need_b else None
        return dx, dw, db


class Linear(nn.Linear):
    """nn.Linear (same parameters and names) whose CPU training step uses `_LinearCPU`."""

    def forward(self, x):
        if self.bias is not None and _cpu_training(self):
            return _LinearCPU.apply(x, self.weight, self.bias)
        return super().forward(x)


class _LayerNormCPU(PyLayer):
    """LayerNorm over the last axis with weight and bias. The backward is the compiled kernel's
    when available (one pass per row), else written out in GEMMs and same-shape ops."""

    @staticmethod
    def forward(ctx, x, weight, bias, epsilon):
        d = x.shape[-1]
        x2 = x.reshape([-1, d])
        ctx.needs = (not x.stop_gradient, not weight.stop_gradient, not bias.stop_gradient)
        ctx.compiled = cpu_kernels.available()
        if ctx.compiled:  # keeps x (as Paddle's kernel does) and two [N] statistics
            ctx.save_for_backward(x2, weight, *cpu_kernels.layer_norm_stats(x2, epsilon))
        else:
            xc = x2 - _expand_rows(_row_means(x2), d)
            rstd = paddle.rsqrt(_row_means(xc * xc) + epsilon)
            ctx.save_for_backward(xc * _expand_rows(rstd, d), rstd, weight)
        return F.layer_norm(x, [d], weight, bias, epsilon)

    @staticmethod
    def backward(ctx, dy):
        need_x, need_w, need_b = ctx.needs
        if ctx.compiled:
            x2, weight, mean, rstd = ctx.saved_tensor()
            dx, dw, db = cpu_kernels.layer_norm_grad(x2, weight, mean, rstd,
                                                     dy.reshape(x2.shape))
            return (dx.reshape(dy.shape) if need_x else None, dw if need_w else None,
                    db if need_b else None)
        xhat, rstd, weight = ctx.saved_tensor()
        n, d = xhat.shape
        dy2 = dy.reshape([n, d])
        dw = _column_sums(dy2 * xhat) if need_w else None
        db = _column_sums(dy2) if need_b else None
        dx = None
        if need_x:
            dxhat = dy2 * paddle.matmul(paddle.ones([n, 1], dy.dtype), weight.reshape([1, d]))
            a, c = _row_means(dxhat), _row_means(dxhat * xhat)
            dx = (dxhat - xhat * _expand_rows(c, d) - _expand_rows(a, d)) * _expand_rows(rstd, d)
            dx = dx.reshape(dy.shape)
        return dx, dw, db


class LayerNorm(nn.LayerNorm):
    """nn.LayerNorm (same parameters and names) whose CPU training step uses `_LayerNormCPU`."""

    def forward(self, x):
        if (self.weight is not None and self.bias is not None and len(self._normalized_shape) == 1
                and _cpu_training(self)):
            return _LayerNormCPU.apply(x, self.weight, self.bias, self._epsilon)
        return super().forward(x)
