"""Transformer building blocks shared by the ViT family (and the R50+ViT hybrid).

Every parameter is created with its final initializer (no re-initialisation pass), so building
ViT-H/14 costs one random fill per tensor. Initialisers follow the original JAX/Flax ViT:
Dense kernels xavier-uniform, MLP biases N(0, 1e-6), other biases 0, patch conv LeCun normal.

Speed notes (CPU, ViT-Ti/16 training): the blocks' Linear, LayerNorm, GELU and attention
softmax train through cpu_ops.py (BLAS forms and compiled kernels); the math attention path
permutes the fused qkv output once (einsum, a dense transpose) and runs one batched matmul pair;
the scale is applied to the contiguous scores (inside the softmax kernel when it runs).
Process-level settings (MKL CPU dispatch on AMD, glibc malloc thresholds: plsc/cpu.py) matter
as much.
"""
import math

import paddle
import numpy as np
import paddle.nn as nn
import paddle.nn.functional as F
from paddle.nn import initializer as init

from ..errors import ConfigError
from .cpu_ops import LayerNorm, Linear, gelu, scaled_softmax


# ---------------------------------------------------------------- initialisers (as ParamAttr)

class _FastUniform(init.Initializer):
    """U(-limit, limit), or xavier-uniform (limit sqrt(6 / (fan_in + fan_out))) when limit is None.

    Paddle's CPU `uniform` op draws ~80M numbers/s on one thread (ViT-H/14: 8 s of an 8.8 s
    build); numpy's PCG64 fills float32 several times faster. The numpy seed is drawn from
    Paddle's generator, so `paddle.seed` still decides the initial weights."""

    def __init__(self, limit=None):
        super().__init__()
        self.limit = limit

    def forward(self, var, block=None):
        shape = [int(d) for d in var.shape]
        limit = self.limit
        if limit is None:  # Linear weights are [in, out]
            limit = math.sqrt(6.0 / (shape[0] + shape[1]))
        seed = int(paddle.randint(0, 2**31 - 1, [1]).item())
        arr = np.random.default_rng(seed).random(shape, dtype=np.float32)
        arr *= 2.0 * limit
        arr -= limit
        var.set_value(arr)
        return None


def xavier_uniform():
    return paddle.ParamAttr(initializer=_FastUniform())


def uniform(limit):
    return paddle.ParamAttr(initializer=_FastUniform(limit))


def normal(std):
    return paddle.ParamAttr(initializer=init.Normal(0.0, std))


def constant(value):
    return paddle.ParamAttr(initializer=init.Constant(value))


def lecun_normal(fan_in):
    """Flax `lecun_normal`: truncated normal on [-2, 2] std with variance exactly 1/fan_in.

    0.8796... is the std of a unit normal truncated to [-2, 2]; dividing by it restores the
    requested variance after truncation (Paddle's TruncatedNormal bounds are absolute)."""
    std = math.sqrt(1.0 / fan_in) / 0.87962566103423978
    return paddle.ParamAttr(initializer=init.TruncatedNormal(0.0, std, -2.0 * std, 2.0 * std))


# ---------------------------------------------------------------- regularisers

def drop_path(x, rate, training):
    """Stochastic depth: drop the whole residual branch per sample, rescale the survivors."""
    if rate == 0.0 or not training:
        return x
    keep = 1.0 - rate
    mask_shape = [x.shape[0]] + [1] * (x.ndim - 1)
    mask = paddle.bernoulli(paddle.full(mask_shape, keep, dtype=x.dtype))
    return x * (mask / keep)


class DropPath(nn.Layer):
    def __init__(self, rate=0.0):
        super().__init__()
        self.rate = float(rate)

    def forward(self, x):
        return drop_path(x, self.rate, self.training)

    def extra_repr(self):
        return f"rate={self.rate}"


def dropout(rate):
    """Dropout layer, or Identity when the rate is 0 (skips a no-op kernel in every block)."""
    return nn.Dropout(rate) if rate > 0 else nn.Identity()


# ---------------------------------------------------------------- blocks

class PatchEmbed(nn.Layer):
    """Non-overlapping patches -> tokens [B, L, D] (conv kernel = stride = patch size)."""

    def __init__(self, img_size=224, patch_size=16, in_chans=3, embed_dim=768):
        super().__init__()
        self.img_size = (img_size, img_size)
        self.patch_size = (patch_size, patch_size)
        self.grid_size = (img_size // patch_size, img_size // patch_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.proj = nn.Conv2D(
            in_chans, embed_dim, patch_size, stride=patch_size,
            weight_attr=lecun_normal(in_chans * patch_size * patch_size),
            bias_attr=constant(0.0),
        )

    def forward(self, x):
        if paddle.in_dynamic_mode() and tuple(x.shape[2:]) != self.img_size:
            # A data pipeline producing another resolution than the model was built for would
            # otherwise fail deep inside the position-embedding add with a shape error.
            raise ConfigError(
                f"input images are {x.shape[2]}x{x.shape[3]} but the model was built for "
                f"img_size {self.img_size[0]}; set Model.img_size or the transforms' size to match"
            )
        x = self.proj(x)  # [B, D, gh, gw]
        return x.flatten(2).transpose([0, 2, 1])  # [B, gh*gw, D], row-major grid


class Attention(nn.Layer):
    """Multi-head self-attention with a fused qkv projection.

    qkv output columns are ordered q | k | v, each head-major, so the weight reshapes to
    [D, 3, H, Dh] (the layout converters from the official q/k/v kernels produce)."""

    def __init__(self, dim, num_heads, qkv_bias=True, attn_drop=0.0, proj_drop=0.0,
                 attn_impl="math"):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.attn_impl = attn_impl
        self.attn_drop_rate = float(attn_drop)
        # The original model has three separate D x D Dense layers (q, k, v), each xavier
        # uniform with limit sqrt(6 / (D + D)) = sqrt(3 / D). Xavier on the fused [D, 3D]
        # matrix would use sqrt(6 / 4D), i.e. a smaller scale; a plain uniform with the
        # per-matrix limit reproduces the original distribution in one fill.
        self.qkv = Linear(dim, 3 * dim, weight_attr=uniform(math.sqrt(3.0 / dim)),
                             bias_attr=constant(0.0) if qkv_bias else False)
        self.attn_drop = dropout(attn_drop)
        self.proj = Linear(dim, dim, weight_attr=xavier_uniform(), bias_attr=constant(0.0))
        self.proj_drop = dropout(proj_drop)

    def forward(self, x, return_attn=False):
        dim = x.shape[-1]
        qkv = self.qkv(x).reshape([0, 0, 3, self.num_heads, self.head_dim])  # [B, N, 3, H, Dh]
        if self.attn_impl == "sdpa" and not return_attn:
            # Fused kernel (flash attention on GPU). Layout [B, N, H, Dh]: unbinding axis 2 of
            # the qkv output gives it without any transpose.
            q, k, v = paddle.unbind(qkv, axis=2)
            out = F.scaled_dot_product_attention(
                q, k, v, dropout_p=self.attn_drop_rate if self.training else 0.0,
                training=self.training)
            probs = None
        else:
            out, probs = self._math_attention(qkv)
        out = self.proj_drop(self.proj(out.reshape([0, 0, dim])))
        return (out, probs) if return_attn else out

    def _math_attention(self, qkv):
        """softmax(q k^T / sqrt(Dh)) v; returns the output [B, N, H, Dh] and the probabilities
        [B, H, N, N] (before attention dropout, so rows sum to 1)."""
        # Head split/merge as einsum permutations: einsum materialises them with a dense
        # transpose kernel, whereas .transpose() returns a strided view that Paddle's default
        # stride kernels later copy (forward and backward) at ~1/5 of the speed: ViT-Ti/16
        # attention fwd+bwd 27 ms vs 62 ms per block on CPU (equal with stride kernels off).
        q, k, v = paddle.unbind(paddle.einsum("bnshd->sbhnd", qkv), axis=0)  # each [B, H, N, Dh]
        probs = scaled_softmax(self, paddle.matmul(q, k, transpose_y=True), self.scale)
        out = paddle.matmul(self.attn_drop(probs), v)  # [B, H, N, Dh]
        return paddle.einsum("bhnd->bnhd", out), probs


class Mlp(nn.Layer):
    """fc1 -> GELU -> dropout -> fc2 -> dropout (the official MlpBlock)."""

    def __init__(self, dim, hidden, act="gelu", drop=0.0):
        super().__init__()
        self.approximate = act == "gelu_tanh"  # erf GELU vs the tanh form jax.nn.gelu uses
        self.fc1 = Linear(dim, hidden, weight_attr=xavier_uniform(), bias_attr=normal(1e-6))
        self.drop1 = dropout(drop)
        self.fc2 = Linear(hidden, dim, weight_attr=xavier_uniform(), bias_attr=normal(1e-6))
        self.drop2 = dropout(drop)

    def forward(self, x):
        x = gelu(self, self.fc1(x), self.approximate)
        return self.drop2(self.fc2(self.drop1(x)))


class Block(nn.Layer):
    """Pre-norm transformer encoder block."""

    def __init__(self, dim, num_heads, mlp_ratio=4.0, qkv_bias=True, drop=0.0, attn_drop=0.0,
                 drop_path_rate=0.0, epsilon=1e-6, act="gelu", attn_impl="math"):
        super().__init__()
        self.norm1 = LayerNorm(dim, epsilon=epsilon)
        self.attn = Attention(dim, num_heads, qkv_bias, attn_drop, drop, attn_impl)
        self.norm2 = LayerNorm(dim, epsilon=epsilon)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act, drop)
        self.drop_path = DropPath(drop_path_rate) if drop_path_rate > 0 else nn.Identity()

    def forward(self, x, return_attn=False):
        if return_attn:
            y, probs = self.attn(self.norm1(x), return_attn=True)
        else:
            y, probs = self.attn(self.norm1(x)), None
        x = x + self.drop_path(y)
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        return (x, probs) if return_attn else x


__all__ = ["Linear", "DropPath", "drop_path", "PatchEmbed", "Attention", "Mlp", "Block",
           "xavier_uniform", "uniform", "normal", "constant", "lecun_normal"]
