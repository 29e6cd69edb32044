"""R50+ViT hybrid (the official "R50+ViT-B/16"): a ResNet stem feeds the ViT instead of pixels.

Architecture, as in the official JAX code (models_resnet.py + models_vit.py):
  * root: 7x7 stride-2 conv (width 64) -> GroupNorm -> ReLU -> 3x3 stride-2 max-pool;
  * stages of bottleneck units (3, 4, 9) with widths 64/128/256 and outputs 4x that
    (256/512/1024); the first unit of every stage has a projection shortcut (conv_proj + gn_proj)
    and units of stages 2.. stride 2 on their first unit's 3x3 conv2;
    unit(x) = relu(shortcut(x) + gn3(conv3(relu(gn2(conv2(relu(gn1(conv1(x)))))))));
  * not pre-activation: conv -> GroupNorm -> ReLU;
  * every conv is weight-standardised at every forward, w = (w - mean) / (std + 1e-5) over
    (in, kh, kw) per output channel, biased std, eps added to the std (not the variance: that
    is timm's StdConv2dSame and differs slightly); no conv bias;
  * GroupNorm: 32 groups, eps 1e-6 (Flax defaults);
  * padding is Flax/TF 'SAME': for a stride-2 conv or pool on an even input the extra pixel is
    padded at the bottom/right, so it is computed per input size instead of a fixed padding;
  * the ViT then embeds the 1024-channel /16 map with a 1x1 "patch" conv (`embedding/kernel`
    (1, 1, 1024, 768)) - so in ViT terms the patch size is 16.

State-dict names (official -> ours mapping is documented in plsc/convert/npz_names.py):
  patch_embed.backbone.root.{conv.weight, gn.weight, gn.bias}
  patch_embed.backbone.stages.{s}.units.{u}.{conv1,conv2,conv3,conv_proj}.weight
  patch_embed.backbone.stages.{s}.units.{u}.{gn1,gn2,gn3,gn_proj}.{weight,bias}
  patch_embed.proj.{weight,bias}, then the usual ViT names.
"""
import dataclasses
import inspect

import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from ..errors import ConfigError
from ..vit_spec import R50_LAYERS, stem_stride
from .layers import constant, lecun_normal
from .vit import VisionTransformer

WS_EPS = 1e-5
GN_GROUPS = 32
GN_EPS = 1e-6


def same_padding(size, kernel, stride):
    """Flax/TF 'SAME' padding (before, after) for one spatial dim: extra pixel goes after."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class StdConv2d(nn.Layer):
    """Conv2D without bias, weight-standardised per output channel, 'SAME' padding."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1):
        super().__init__()
        self.stride, self.kernel_size = stride, kernel_size
        self.weight = self.create_parameter(
            [out_channels, in_channels, kernel_size, kernel_size],
            attr=lecun_normal(in_channels * kernel_size * kernel_size))  # Flax nn.Conv default

    def standardized_weight(self):
        w = self.weight
        mean = w.mean(axis=[1, 2, 3], keepdim=True)
        std = (w - mean).square().mean(axis=[1, 2, 3], keepdim=True).sqrt()
        return (w - mean) / (std + WS_EPS)

    def forward(self, x):
        k, s = self.kernel_size, self.stride
        pad_h = same_padding(x.shape[2], k, s)
        pad_w = same_padding(x.shape[3], k, s)
        return F.conv2d(x, self.standardized_weight(), stride=s,
                        padding=[pad_h[0], pad_h[1], pad_w[0], pad_w[1]])


def _group_norm(channels, zero_init=False):
    return nn.GroupNorm(GN_GROUPS, channels, epsilon=GN_EPS,
                        weight_attr=constant(0.0 if zero_init else 1.0), bias_attr=constant(0.0))


class ResidualUnit(nn.Layer):
    """Bottleneck unit; `stride` on conv2; projection shortcut when shape or stride changes."""

    def __init__(self, in_channels, width, stride=1):
        super().__init__()
        out = 4 * width
        self.conv1, self.gn1 = StdConv2d(in_channels, width, 1), _group_norm(width)
        self.conv2, self.gn2 = StdConv2d(width, width, 3, stride), _group_norm(width)
        # Official init: the last GroupNorm scale starts at zero so each unit starts as identity.
        self.conv3, self.gn3 = StdConv2d(width, out, 1), _group_norm(out, zero_init=True)
        self.has_proj = in_channels != out or stride != 1
        if self.has_proj:
            self.conv_proj = StdConv2d(in_channels, out, 1, stride)
            self.gn_proj = _group_norm(out)

    def forward(self, x):
        residual = self.gn_proj(self.conv_proj(x)) if self.has_proj else x
        y = F.relu(self.gn1(self.conv1(x)))
        y = F.relu(self.gn2(self.conv2(y)))
        y = self.gn3(self.conv3(y))
        return F.relu(residual + y)


class ResNetStage(nn.Layer):
    def __init__(self, in_channels, width, units, stride):
        super().__init__()
        self.units = nn.LayerList(
            [ResidualUnit(in_channels if i == 0 else 4 * width, width, stride if i == 0 else 1)
             for i in range(units)])

    def forward(self, x):
        for unit in self.units:
            x = unit(x)
        return x


class RootBlock(nn.Layer):
    def __init__(self, in_channels, width):
        super().__init__()
        self.conv = StdConv2d(in_channels, width, 7, 2)
        self.gn = _group_norm(width)

    def forward(self, x):
        x = F.relu(self.gn(self.conv(x)))
        pad_h = same_padding(x.shape[2], 3, 2)
        pad_w = same_padding(x.shape[3], 3, 2)
        # Paddle's max-pool ignores padded cells, like Flax's -inf padding.
        return F.max_pool2d(x, 3, 2, padding=[pad_h[0], pad_h[1], pad_w[0], pad_w[1]])


class ResNetBackbone(nn.Layer):
    """Root + stages; output stride 4 * 2**(len(layers) - 1), channels 4 * width * 2**(S-1)."""

    def __init__(self, in_channels=3, width=64, layers=R50_LAYERS):
        super().__init__()
        if width % GN_GROUPS:
            raise ConfigError(f"resnet_width must be a multiple of {GN_GROUPS} (GroupNorm "
                              f"groups), got {width}")
        if not layers or any(int(u) < 1 for u in layers):
            raise ConfigError(f"resnet_layers must list at least one stage of >= 1 units, "
                              f"got {list(layers)}")
        self.root = RootBlock(in_channels, width)
        stages, cin = [], width
        for i, units in enumerate(layers):
            w = width * 2 ** i
            stages.append(ResNetStage(cin, w, int(units), 1 if i == 0 else 2))
            cin = 4 * w
        self.stages = nn.LayerList(stages)
        self.out_channels = cin
        self.stride = stem_stride(layers)

    def forward(self, x):
        x = self.root(x)
        for stage in self.stages:
            x = stage(x)
        return x


class HybridEmbed(nn.Layer):
    """ResNet stem + patch-embedding conv -> tokens [B, L, D]; a drop-in for PatchEmbed.

    `patch_size` is the total stride in pixels (16 for R50+ViT-B/16): the conv on the stem's
    output uses kernel = stride = patch_size / stem stride (1 for the R50 stem)."""

    def __init__(self, img_size=224, patch_size=16, in_chans=3, embed_dim=768,
                 resnet_layers=R50_LAYERS, resnet_width=64):
        super().__init__()
        self.backbone = ResNetBackbone(in_chans, resnet_width, resnet_layers)
        self.layers = tuple(resnet_layers)
        stride = self.backbone.stride
        if patch_size % stride:
            raise ConfigError(f"ViTHybrid: patch_size {patch_size} must be a multiple of the "
                              f"ResNet stem's stride {stride} ({len(resnet_layers)} stages)")
        k = patch_size // stride
        self.img_size = (img_size, img_size)
        self.patch_size = (patch_size, patch_size)
        self.grid_size = (img_size // patch_size, img_size // patch_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        cin = self.backbone.out_channels
        self.proj = nn.Conv2D(cin, embed_dim, k, stride=k, weight_attr=lecun_normal(cin * k * k),
                              bias_attr=constant(0.0))

    def forward(self, x):
        if paddle.in_dynamic_mode() and tuple(x.shape[2:]) != self.img_size:
            raise ConfigError(
                f"input images are {x.shape[2]}x{x.shape[3]} but the model was built for "
                f"img_size {self.img_size[0]}; set Model.img_size or the transforms' size to match")
        x = self.proj(self.backbone(x))  # [B, D, gh, gw]
        return x.flatten(2).transpose([0, 2, 1])


class ViTHybrid(VisionTransformer):
    """VisionTransformer whose patch embedding is `HybridEmbed` (ResNet stem + 1x1 conv).

    Takes every VisionTransformer keyword plus resnet_layers (units per stage) and
    resnet_width (stem width, a multiple of 32). Pooling, blocks, heads are the ViT's.
    """

    def __init__(self, resnet_layers=R50_LAYERS, resnet_width=64, **kwargs):
        super().__init__(**kwargs)
        # VisionTransformer built a pixel PatchEmbed; swap in the stem (same name, so the state
        # dict keeps `patch_embed.proj.*` and gains `patch_embed.backbone.*`). The token grid
        # is img_size / patch_size in both, so pos_embed is already the right size.
        self.patch_embed = HybridEmbed(
            self.img_size, self.patch_size, kwargs.get("in_chans", 3), self.embed_dim,
            tuple(int(u) for u in resnet_layers), int(resnet_width))
        self.spec = dataclasses.replace(self.spec, resnet_layers=self.patch_embed.layers,
                                        resnet_width=int(resnet_width))


def _signature():
    """ViTHybrid's config keys: the stem's, then VisionTransformer's, all keyword-only."""
    kw = inspect.Parameter.KEYWORD_ONLY
    vit = list(inspect.signature(VisionTransformer.__init__).parameters.values())
    return inspect.Signature(
        [vit[0],  # self
         inspect.Parameter("resnet_layers", kw, default=R50_LAYERS, annotation=list),
         inspect.Parameter("resnet_width", kw, default=64, annotation=int)]
        + [p.replace(kind=kw) for p in vit[1:]])


# **kwargs forwards to VisionTransformer; the explicit signature lets the registry (and the
# config validator) see every accepted key with its default.
ViTHybrid.__init__.__signature__ = _signature()
