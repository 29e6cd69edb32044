"""Vision Transformer (Dosovitskiy et al. 2020) with PLSC-compatible parameter names.

State dict: pos_embed [1, N(+1), D], cls_token [1, 1, D] (token pooling only),
patch_embed.proj.{weight,bias} (OIHW), blocks.N.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}.*,
norm.*, head0.* (pre-logits Dense + tanh, only with representation_size), head.*.
Linear weights are [in, out].

`global_pool='gap'` follows the official gap models: no class token, no class row in pos_embed,
mean over tokens taken after the final LayerNorm.
"""
import inspect
from typing import Optional

import numpy as np
import paddle
import paddle.nn as nn

from ..errors import ConfigError
from ..registry import MODELS
from .layers import Block, PatchEmbed, constant, dropout, normal, xavier_uniform

GLOBAL_POOLS = ("token", "gap")
ACTS = ("gelu", "gelu_tanh")
ATTN_IMPLS = ("auto", "math", "sdpa")


def resolve_attn_impl(attn_impl):
    """'auto' -> 'sdpa' on GPU, 'math' elsewhere.

    On GPU the fused kernel (flash attention) is faster and never materialises the [B, H, N, N]
    scores. On CPU Paddle's sdpa runs the same math as our explicit path but routes gradients
    through an extra unbind copy: measured equal or slower for ViT-Ti/16 training, so 'math'."""
    if attn_impl != "auto":
        return attn_impl
    return "sdpa" if paddle.device.get_device().startswith("gpu") else "math"


def _fail(message):
    raise ConfigError(f"VisionTransformer: {message}")


def _check_choice(arg, value, choices):
    if value not in choices:
        _fail(f"{arg} must be one of {', '.join(repr(c) for c in choices)}; got {value!r}")


def _check_int(arg, value, minimum):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        _fail(f"{arg} must be an integer >= {minimum}; got {value!r}")


def _check_rate(arg, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        _fail(f"{arg} must be a number in [0, 1); got {value!r}")


@MODELS.register()
class VisionTransformer(nn.Layer):
    """ViT encoder + classifier. `forward(x)` -> logits [B, class_num].

    attn_impl: 'auto' (default) resolves at construction to 'sdpa' on GPU and 'math' on CPU
    (see `resolve_attn_impl`); 'math' computes the attention probabilities explicitly and is
    the only path used when they are requested (`return_attn=True`).
    class_num=0 builds no head: `forward` returns the pooled (pre-logits) features.
    """

    def __init__(self, img_size: int = 224, patch_size: int = 16, in_chans: int = 3,
                 class_num: int = 1000, embed_dim: int = 768, depth: int = 12,
                 num_heads: int = 12, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 representation_size: Optional[int] = None, global_pool: str = "token",
                 drop_rate: float = 0.0, attn_drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0, epsilon: float = 1e-6, act: str = "gelu",
                 attn_impl: str = "auto", head_bias: float = 0.0):
        super().__init__()
        _check_choice("global_pool", global_pool, GLOBAL_POOLS)
        _check_choice("act", act, ACTS)
        _check_choice("attn_impl", attn_impl, ATTN_IMPLS)
        for arg, value in (("img_size", img_size), ("patch_size", patch_size),
                           ("in_chans", in_chans), ("embed_dim", embed_dim),
                           ("depth", depth), ("num_heads", num_heads)):
            _check_int(arg, value, 1)
        _check_int("class_num", class_num, 0)
        if representation_size is not None:
            _check_int("representation_size", representation_size, 1)
        for arg, value in (("drop_rate", drop_rate), ("attn_drop_rate", attn_drop_rate),
                           ("drop_path_rate", drop_path_rate)):
            _check_rate(arg, value)
        if isinstance(mlp_ratio, bool) or not isinstance(mlp_ratio, (int, float)) \
                or not mlp_ratio > 0:
            _fail(f"mlp_ratio must be a number > 0; got {mlp_ratio!r}")
        if embed_dim % num_heads:
            _fail(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        if img_size % patch_size:
            _fail(f"img_size {img_size} is not divisible by patch_size {patch_size}")

        self.img_size = img_size
        self.patch_size = patch_size
        self.class_num = class_num
        self.embed_dim = embed_dim
        self.depth = depth
        self.num_heads = num_heads
        self.global_pool = global_pool
        self.representation_size = representation_size
        self.num_features = representation_size or embed_dim  # width of the head's input
        self.attn_impl = resolve_attn_impl(attn_impl)
        self.num_prefix_tokens = 1 if global_pool == "token" else 0
        self.grad_checkpointing = False  # the engine sets this from DistributedStrategy.recompute

        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        num_tokens = self.patch_embed.num_patches + self.num_prefix_tokens
        self.cls_token = (
            self.create_parameter([1, 1, embed_dim], attr=constant(0.0))
            if self.num_prefix_tokens else None
        )
        self.pos_embed = self.create_parameter([1, num_tokens, embed_dim], attr=normal(0.02))
        self.pos_drop = dropout(drop_rate)

        # Stochastic depth grows linearly from 0 (first block) to drop_path_rate (last block).
        rates = np.linspace(0.0, drop_path_rate, depth).tolist()
        self.blocks = nn.LayerList([
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias, drop_rate, attn_drop_rate,
                  rates[i], epsilon, act, self.attn_impl)
            for i in range(depth)
        ])
        self.norm = nn.LayerNorm(embed_dim, epsilon=epsilon)
        if representation_size:
            self.head0 = nn.Linear(embed_dim, representation_size,
                                   weight_attr=xavier_uniform(), bias_attr=constant(0.0))
        else:
            self.head0 = None
        # Zero head (and a constant bias, e.g. -10 for sigmoid training) as in the original.
        if class_num > 0:
            self.head = nn.Linear(self.num_features, class_num, weight_attr=constant(0.0),
                                  bias_attr=constant(float(head_bias)))
        else:
            self.head = nn.Identity()

    def forward_features(self, x, return_attn=False):
        """Images [B, C, H, W] -> final normed tokens [B, N, D] (+ per-layer attention probs
        [B, H, N, N] when return_attn)."""
        x = self.patch_embed(x)
        if self.cls_token is not None:
            # The class token is prepended before the position embedding is added.
            x = paddle.concat([self.cls_token.expand([x.shape[0], -1, -1]), x], axis=1)
        x = self.pos_drop(x + self.pos_embed)
        attns = []
        for block in self.blocks:
            if return_attn:
                x, probs = block(x, return_attn=True)
                attns.append(probs)
            elif self.grad_checkpointing and self.training:
                from paddle.distributed.fleet.utils import recompute

                x = recompute(block, x)
            else:
                x = block(x)
        x = self.norm(x)
        return (x, attns) if return_attn else x

    def forward_head(self, x):
        """Final tokens [B, N, D] -> logits: pool, pre-logits (Dense + tanh), head."""
        x = x[:, 0] if self.global_pool == "token" else x.mean(axis=1)
        if self.head0 is not None:
            x = paddle.tanh(self.head0(x))
        return self.head(x)

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


# ---------------------------------------------------------------- named factories

_VIT_SIGNATURE = inspect.signature(VisionTransformer.__init__)


def _factory(name, doc, **preset):
    """A registered function building VisionTransformer(**preset, **overrides).

    Its __signature__ is VisionTransformer's keywords with the preset as defaults, so the
    registry (and the config validator) see every accepted key and the real default values."""

    def factory(**kwargs):
        return VisionTransformer(**{**preset, **kwargs})

    params = [
        p.replace(kind=inspect.Parameter.KEYWORD_ONLY, default=preset.get(p.name, p.default))
        for p in list(_VIT_SIGNATURE.parameters.values())[1:]  # drop self
    ]
    factory.__signature__ = inspect.Signature(params)
    factory.__name__ = factory.__qualname__ = name
    factory.__doc__ = doc
    factory.preset = dict(preset)
    return MODELS.register(name)(factory)


# Official sizes (hidden / heads / layers, MLP 4x): Ti 192/3/12, S 384/6/12, B 768/12/12,
# L 1024/16/24, H 1280/16/32.
TINY = dict(embed_dim=192, depth=12, num_heads=3)
SMALL = dict(embed_dim=384, depth=12, num_heads=6)
BASE = dict(embed_dim=768, depth=12, num_heads=12)
LARGE = dict(embed_dim=1024, depth=24, num_heads=16)
HUGE = dict(embed_dim=1280, depth=32, num_heads=16)

ViT_tiny_patch16_224 = _factory("ViT_tiny_patch16_224", "ViT-Ti/16, 224 px.",
                                img_size=224, patch_size=16, **TINY)
ViT_tiny_patch16_384 = _factory("ViT_tiny_patch16_384", "ViT-Ti/16, 384 px.",
                                img_size=384, patch_size=16, **TINY)
ViT_small_patch16_224 = _factory("ViT_small_patch16_224", "ViT-S/16, 224 px.",
                                 img_size=224, patch_size=16, **SMALL)
ViT_small_patch16_384 = _factory("ViT_small_patch16_384", "ViT-S/16, 384 px.",
                                 img_size=384, patch_size=16, **SMALL)
ViT_small_patch32_224 = _factory("ViT_small_patch32_224", "ViT-S/32, 224 px.",
                                 img_size=224, patch_size=32, **SMALL)
ViT_small_patch32_384 = _factory("ViT_small_patch32_384", "ViT-S/32, 384 px.",
                                 img_size=384, patch_size=32, **SMALL)
ViT_base_patch8_224 = _factory("ViT_base_patch8_224", "ViT-B/8, 224 px.",
                               img_size=224, patch_size=8, **BASE)
ViT_base_patch16_224 = _factory("ViT_base_patch16_224",
                                "ViT-B/16, 224 px (86,567,656 params with 1000 classes).",
                                img_size=224, patch_size=16, **BASE)
ViT_base_patch16_384 = _factory("ViT_base_patch16_384", "ViT-B/16, 384 px.",
                                img_size=384, patch_size=16, **BASE)
ViT_base_patch32_224 = _factory("ViT_base_patch32_224", "ViT-B/32, 224 px.",
                                img_size=224, patch_size=32, **BASE)
ViT_base_patch32_384 = _factory("ViT_base_patch32_384", "ViT-B/32, 384 px.",
                                img_size=384, patch_size=32, **BASE)
ViT_large_patch16_224 = _factory("ViT_large_patch16_224", "ViT-L/16, 224 px.",
                                 img_size=224, patch_size=16, **LARGE)
ViT_large_patch16_384 = _factory("ViT_large_patch16_384", "ViT-L/16, 384 px.",
                                 img_size=384, patch_size=16, **LARGE)
ViT_large_patch32_224 = _factory("ViT_large_patch32_224", "ViT-L/32, 224 px.",
                                 img_size=224, patch_size=32, **LARGE)
ViT_large_patch32_384 = _factory("ViT_large_patch32_384", "ViT-L/32, 384 px.",
                                 img_size=384, patch_size=32, **LARGE)
ViT_huge_patch14_224 = _factory("ViT_huge_patch14_224",
                                "ViT-H/14, 224 px (632,045,800 params with 1000 classes).",
                                img_size=224, patch_size=14, **HUGE)
# 384 is not a multiple of 14. PLSC builds this model at 384 and its conv silently ignores the
# last 6 pixel rows/columns (27 x 27 patches); we keep that grid (pos_embed [1, 730, 1280], so
# PLSC weights load) but state the real input size, 27 * 14 = 378, instead of cropping silently.
ViT_huge_patch14_384 = _factory("ViT_huge_patch14_384",
                                "ViT-H/14 at the 384 setting: 378 px input (27 x 27 patches).",
                                img_size=378, patch_size=14, **HUGE)

# NOT an official model: a small quick-start variant for 32 px data (CIFAR-like), 8x8 = 64
# patches of 4 px, width 96, 4 blocks, 3 heads. Sized so 2 CPU processes train it to ~70% on
# SyntheticShapes in under 4 minutes (~296 img/s); ViT-Ti's width and depth (192, 12) would be
# ~7x slower there.
ViT_tiny_patch4_32 = _factory(
    "ViT_tiny_patch4_32",
    "Non-official small ViT for 32 px images: patch 4, embed 96, 3 heads, depth 4.",
    img_size=32, patch_size=4, embed_dim=96, depth=4, num_heads=3)
