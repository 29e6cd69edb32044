"""Vision Transformer (Dosovitskiy et al. 2020) with PLSC-compatible parameter names.

State dict: pos_embed [1, N(+1), D], cls_token [1, 1, D] (token pooling only),
patch_embed.proj.{weight,bias} (OIHW), blocks.N.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}.*,
norm.*, head0.* (pre-logits Dense + tanh, only with representation_size), head.*.
Linear weights are [in, out].

`global_pool='gap'` follows the official gap models: no class token, no class row in pos_embed,
mean over tokens taken after the final LayerNorm.
"""
from typing import Annotated, Literal, Optional

import numpy as np
import paddle
import paddle.nn as nn

from ..config.types import between, ge, gt
from ..errors import ConfigError
from ..vit_spec import HEAD_NAMES, pool_tokens, spec_from_kwargs
from .cpu_ops import LayerNorm
from .layers import Block, PatchEmbed, constant, dropout, normal, xavier_uniform



def resolve_attn_impl(attn_impl):
    """'auto' -> 'sdpa' on GPU, 'math' elsewhere.

    On GPU the fused kernel (flash attention) is faster and never materialises the [B, H, N, N]
    scores. On CPU Paddle's sdpa runs the same math as our explicit path but routes gradients
    through an extra unbind copy: measured equal or slower for ViT-Ti/16 training, so 'math'."""
    if attn_impl != "auto":
        return attn_impl
    return "sdpa" if paddle.device.get_device().startswith("gpu") else "math"


PosInt = Annotated[int, ge(1)]
Rate = Annotated[float, between(0, 1, hi_open=True)]


def check_vit(values):
    """Cross-key rules of VisionTransformer (schema `check=`): the layers would fail obscurely."""
    if values["embed_dim"] % values["num_heads"]:
        return (f"embed_dim {values['embed_dim']} is not divisible by "
                f"num_heads {values['num_heads']}")
    if values["img_size"] % values["patch_size"]:
        return (f"img_size {values['img_size']} is not divisible by "
                f"patch_size {values['patch_size']}")
    return None


class VisionTransformer(nn.Layer):
    """ViT encoder + classifier. `forward(x)` -> logits [B, class_num].

    attn_impl: 'auto' (default) resolves at construction to 'sdpa' on GPU and 'math' on CPU
    (see `resolve_attn_impl`); 'math' computes the attention probabilities explicitly and is
    the only path used when they are requested (`return_attn=True`).
    class_num=0 builds no head: `forward` returns the pooled (pre-logits) features.
    `self.spec` (plsc.vit_spec.ViTSpec) is the architecture; the state dict is exactly
    `vit_spec.state_shapes(self.spec)`.
    """

    def __init__(self, img_size: PosInt = 224, patch_size: PosInt = 16, in_chans: PosInt = 3,
                 class_num: Annotated[int, ge(0)] = 1000, embed_dim: PosInt = 768,
                 depth: PosInt = 12, num_heads: PosInt = 12,
                 mlp_ratio: Annotated[float, gt(0)] = 4.0, qkv_bias: bool = True,
                 representation_size: Optional[PosInt] = None,
                 global_pool: Literal["token", "gap"] = "token",
                 drop_rate: Rate = 0.0, attn_drop_rate: Rate = 0.0,
                 drop_path_rate: Rate = 0.0, epsilon: float = 1e-6,
                 act: Literal["gelu", "gelu_tanh"] = "gelu",
                 attn_impl: Literal["auto", "math", "sdpa"] = "auto", head_bias: float = 0.0):
        super().__init__()
        # The architecture keywords, by name, straight from the signature.
        spec = spec_from_kwargs(locals())
        self.spec = spec
        self.img_size, self.patch_size = img_size, patch_size
        self.class_num, self.embed_dim = class_num, embed_dim
        self.depth, self.num_heads = depth, num_heads
        self.global_pool = global_pool
        self.representation_size = representation_size
        self.num_features = spec.num_features  # width of the head's input
        self.attn_impl = resolve_attn_impl(attn_impl)
        self.num_prefix_tokens = spec.num_prefix_tokens
        # Recompute (set_grad_checkpointing, DistributedStrategy.recompute): when on, blocks
        # 0, K, 2K, ... (K = recompute_interval; 0: none by interval) and the units named in
        # recompute_names keep only their inputs for backward and rerun their forward there.
        self.grad_checkpointing = False
        self.recompute_interval = 1
        self.recompute_names = frozenset()

        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        self.cls_token = (
            self.create_parameter([1, 1, embed_dim], attr=constant(0.0))
            if self.num_prefix_tokens else None
        )
        self.pos_embed = self.create_parameter([1, spec.num_tokens, embed_dim],
                                               attr=normal(0.02))
        self.pos_drop = dropout(drop_rate)

        # Stochastic depth grows linearly from 0 (first block) to drop_path_rate (last block).
        rates = np.linspace(0.0, drop_path_rate, depth).tolist()
        self.blocks = nn.LayerList([
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias, drop_rate, attn_drop_rate,
                  rates[i], epsilon, act, self.attn_impl)
            for i in range(depth)
        ])
        self.norm = LayerNorm(embed_dim, epsilon=epsilon)
        self.head0 = nn.Linear(embed_dim, representation_size, weight_attr=xavier_uniform(),
                               bias_attr=constant(0.0)) if representation_size else None
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
        for i, block in enumerate(self.blocks):
            if return_attn:
                x, probs = block(x, return_attn=True)
                attns.append(probs)
            else:
                x = self._unit(f"blocks.{i}", block, x, i)
        x = self.norm(x)
        return (x, attns) if return_attn else x

    def forward_head(self, x, pre_logits=False):
        """Final tokens [B, N, D] -> logits: pool, pre-logits (Dense + tanh), head.
        pre_logits=True stops before the head: the features the classifier sees [B, F]."""
        x = pool_tokens(x, self.global_pool)
        if self.head0 is not None:
            x = paddle.tanh(self.head0(x))
        return x if pre_logits else self.head(x)

    def forward(self, x):
        return self.forward_head(self.forward_features(x))

    def _unit(self, name, layer, x, block_index):
        """layer(x), recomputed in backward when configured (training only)."""
        k = self.recompute_interval
        if (self.grad_checkpointing and self.training
                and (name in self.recompute_names or (k and block_index % k == 0))):
            from paddle.distributed.fleet import utils as fleet_utils

            # Paddle's recompute replays the RNG state: dropout and drop-path masks in the
            # backward's rerun equal the forward's, so gradients are unchanged.
            return fleet_utils.recompute(layer, x)
        return layer(x)

    def recompute_units(self):
        """The names `set_grad_checkpointing(names=...)` accepts (PLSC's `recompute.names` are
        sublayer names): the blocks. Only a unit whose input needs a gradient can be
        recomputed (Paddle runs any other normally), so the patch embedding is not one."""
        return tuple(f"blocks.{i}" for i in range(self.depth))

    def set_grad_checkpointing(self, enable=True, interval=1, names=()):
        """Recompute activations in the backward pass (training only) of blocks 0, K, 2K, ...
        (K = `interval`, PLSC's `layerlist_interval`; 0 selects no block by interval) and of the
        units in `names` (see recompute_units). enable=False turns recompute off."""
        units = self.recompute_units()
        unknown = [n for n in names if n not in units]
        if unknown:
            raise ConfigError(f"unknown layer name(s) {', '.join(map(repr, unknown))}; "
                              f"recomputable: blocks.0 ... blocks.{self.depth - 1}")
        if int(interval) < 0:
            raise ConfigError(f"recompute interval must be >= 0, got {interval}")
        self.grad_checkpointing = bool(enable)
        self.recompute_interval = int(interval)
        self.recompute_names = frozenset(names)

    def head_names(self):
        """Top-level names of the head layers, pre-logits first (including `head0` when this
        model has none: a checkpoint may carry one, which fine-tuning must then drop)."""
        return HEAD_NAMES

    # Parameters before the first block (what the patch embedding and the tokens own), by the
    # first component of their structured name. The hybrid's ResNet stem lives under
    # `patch_embed.backbone`, so it is layer 0 too.
    EMBEDDING_NAMES = ("patch_embed", "cls_token", "dist_token", "pos_embed")

    def num_layers(self):
        """Transformer blocks, for layer-wise lr decay (plsc/optim/layer_decay.py)."""
        return self.depth

    def layer_id(self, param_name):
        """Layer of a structured parameter name: embeddings 0, `blocks.i.*` i + 1, everything
        after the blocks (final norm, pre-logits, head) num_layers() + 1."""
        first, _, rest = param_name.partition(".")
        if first in self.EMBEDDING_NAMES:
            return 0
        if first == "blocks":
            return int(rest.partition(".")[0]) + 1
        return self.depth + 1

    def no_weight_decay(self):
        """Structured names of the parameters trained without weight decay: every bias, every
        LayerNorm/GroupNorm parameter, the position embedding and the class token."""
        names = {"pos_embed"} | ({"cls_token"} if self.cls_token is not None else set())
        for prefix, layer in self.named_sublayers():
            is_norm = isinstance(layer, (nn.LayerNorm, nn.GroupNorm))
            for name, _ in layer.named_parameters(include_sublayers=False):
                if is_norm or name == "bias":
                    names.add(f"{prefix}.{name}")
        return names
