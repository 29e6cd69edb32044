"""The ViT family's contract as data: `ViTSpec` (one model's architecture) and `VARIANTS` (the
named models). Everything that needs the layout derives it from here: the registered factories
(plsc/models), our state-dict names and shapes, parameter and MAC counts (plsc/flops.py), the
converters' maps (plsc/convert) and "which named model is this checkpoint".

A new variant is one line in VARIANTS. This module does not import paddle, so the converters and
plsc-model-info can read it cheaply (importing plsc.models would import paddle).
"""
import math
from dataclasses import asdict, dataclass, replace
from typing import NamedTuple, Optional

HEAD_NAMES = ("head0", "head")  # pre-logits first: dropping it invalidates the head's input
GLOBAL_POOLS = ("token", "gap")
R50_LAYERS = (3, 4, 9)
# The official sizes: name -> (letter in "ViT-B/16", width, depth, heads); MLP is 4x the width.
SIZES = {"tiny": ("Ti", 192, 12, 3), "small": ("S", 384, 12, 6), "base": ("B", 768, 12, 12),
         "large": ("L", 1024, 24, 16), "huge": ("H", 1280, 32, 16)}


def stem_stride(resnet_layers):
    """Pixels per position of the hybrid stem's output (1 without a stem): the root conv and the
    max-pool halve the resolution, and so does every stage after the first."""
    return 1 if resnet_layers is None else 4 * 2 ** (len(resnet_layers) - 1)


def pool_tokens(tokens, global_pool):
    """Final tokens [B, N, D] -> [B, D]: the class token ('token') or the mean over all tokens
    ('gap', the official gap models: no class token, mean after the final LayerNorm).
    Indexing and .mean(axis=1) work on paddle tensors and numpy arrays alike."""
    return tokens[:, 0] if global_pool == "token" else tokens.mean(axis=1)


@dataclass(frozen=True)
class ViTSpec:
    """Architecture keywords of VisionTransformer / ViTHybrid, in their signature's order."""

    img_size: int = 224
    patch_size: int = 16  # pixels per token side; for hybrids the stem's stride x the 1x1 conv
    in_chans: int = 3
    class_num: int = 1000  # 0: no classifier, the model returns the pooled features
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    representation_size: Optional[int] = None  # pre-logits Dense + tanh (`head0`)
    global_pool: str = "token"
    resnet_layers: Optional[tuple] = None  # hybrid stem: units per stage, e.g. (3, 4, 9)
    resnet_width: int = 64

    @property
    def mlp_dim(self):
        return int(self.embed_dim * self.mlp_ratio)  # the rounding the model's Mlp uses

    @property
    def grid(self):
        return (self.img_size // self.patch_size,) * 2

    @property
    def num_prefix_tokens(self):
        return 1 if self.global_pool == "token" else 0

    @property
    def num_tokens(self):
        return self.grid[0] * self.grid[1] + self.num_prefix_tokens

    @property
    def stem_stride(self):
        return stem_stride(self.resnet_layers)

    @property
    def embed_kernel(self):
        """Kernel (= stride) of the patch-embedding conv."""
        return self.patch_size // self.stem_stride

    @property
    def embed_in_chans(self):
        """Channels the patch-embedding conv sees: the image's, or the stem's output."""
        return self.in_chans if self.resnet_layers is None else 4 * self.stages()[-1][1]

    @property
    def num_features(self):
        """Width of the classifier's input."""
        return self.representation_size or self.embed_dim

    def stages(self):
        """[(units, width, stride)] of the hybrid stem; unit outputs are 4 x width."""
        return [(int(u), self.resnet_width * 2 ** i, 1 if i == 0 else 2)
                for i, u in enumerate(self.resnet_layers or ())]

    def config(self):
        """The model keywords that build this architecture (no stem keys for a plain ViT)."""
        cfg = asdict(self)
        if self.resnet_layers is None:
            del cfg["resnet_layers"], cfg["resnet_width"]
        return cfg


ARCH_KEYS = tuple(ViTSpec.__dataclass_fields__)


def spec_from_kwargs(kwargs):
    """The ViTSpec of model keywords (other keys, e.g. drop rates, are ignored)."""
    spec = {k: kwargs[k] for k in ARCH_KEYS if k in kwargs}
    if spec.get("resnet_layers") is not None:
        spec["resnet_layers"] = tuple(int(u) for u in spec["resnet_layers"])
    return ViTSpec(**spec)


# ---------------------------------------------------------------- our state-dict layout

def _stem_shapes(spec, s):
    pre, w = "patch_embed.backbone.", spec.resnet_width
    s[pre + "root.conv.weight"] = (w, spec.in_chans, 7, 7)
    s[pre + "root.gn.weight"] = s[pre + "root.gn.bias"] = (w,)
    cin = w
    for si, (units, width, _) in enumerate(spec.stages()):
        for ui in range(units):
            u = f"{pre}stages.{si}.units.{ui}."
            for n, shape in (("1", (width, cin, 1, 1)), ("2", (width, width, 3, 3)),
                             ("3", (4 * width, width, 1, 1))):
                s[u + f"conv{n}.weight"] = shape
                s[u + f"gn{n}.weight"] = s[u + f"gn{n}.bias"] = shape[:1]
            if ui == 0:  # the first unit changes width (and stride): projection shortcut
                s[u + "conv_proj.weight"] = (4 * width, cin, 1, 1)
                s[u + "gn_proj.weight"] = s[u + "gn_proj.bias"] = (4 * width,)
            cin = 4 * width


def state_shapes(spec):
    """{name: shape} of our state dict (PLSC names, Linear [in, out], Conv OIHW)."""
    d, m, k = spec.embed_dim, spec.mlp_dim, spec.embed_kernel
    s = {}
    if spec.resnet_layers is not None:
        _stem_shapes(spec, s)
    s["patch_embed.proj.weight"] = (d, spec.embed_in_chans, k, k)
    s["patch_embed.proj.bias"] = (d,)
    if spec.num_prefix_tokens:
        s["cls_token"] = (1, 1, d)
    s["pos_embed"] = (1, spec.num_tokens, d)
    for i in range(spec.depth):
        b = f"blocks.{i}."
        s[b + "norm1.weight"] = s[b + "norm1.bias"] = (d,)
        s[b + "attn.qkv.weight"] = (d, 3 * d)
        if spec.qkv_bias:
            s[b + "attn.qkv.bias"] = (3 * d,)
        s[b + "attn.proj.weight"], s[b + "attn.proj.bias"] = (d, d), (d,)
        s[b + "norm2.weight"] = s[b + "norm2.bias"] = (d,)
        s[b + "mlp.fc1.weight"], s[b + "mlp.fc1.bias"] = (d, m), (m,)
        s[b + "mlp.fc2.weight"], s[b + "mlp.fc2.bias"] = (m, d), (d,)
    s["norm.weight"] = s["norm.bias"] = (d,)
    if spec.representation_size:
        r = spec.representation_size
        s["head0.weight"], s["head0.bias"] = (d, r), (r,)
    if spec.class_num > 0:
        s["head.weight"], s["head.bias"] = (spec.num_features, spec.class_num), (spec.class_num,)
    return s


def count_params(spec):
    return sum(math.prod(shape) for shape in state_shapes(spec).values())


# ---------------------------------------------------------------- names

def size_name(spec):
    """'base' etc. when the transformer is one of the official sizes, else None."""
    for name, (_, d, depth, heads) in SIZES.items():
        if (spec.embed_dim, spec.depth, spec.num_heads, spec.mlp_dim) == (d, depth, heads, 4 * d):
            return name
    return None


def label(spec):
    """Short human name without the resolution: 'ViT-B/16', 'R50+ViT-B/16', 'ViT(d=32, ...)'."""
    size = size_name(spec)
    core = (f"ViT-{SIZES[size][0]}/{spec.patch_size}" if size else
            f"ViT(d={spec.embed_dim}, depth={spec.depth}, heads={spec.num_heads}, "
            f"mlp={spec.mlp_dim}, patch={spec.patch_size})")
    if spec.resnet_layers is None:
        return core
    if tuple(spec.resnet_layers) == R50_LAYERS and spec.resnet_width == 64:
        return "R50+" + core
    return f"R{spec.resnet_layers}x{spec.resnet_width}+{core}"


class Variant(NamedTuple):
    spec: ViTSpec
    doc: str


def vit(size, patch, img, doc=None, **extra):
    """A variant of an official size (`extra`: more ViTSpec fields, e.g. a stem)."""
    _, d, depth, heads = SIZES[size]
    spec = ViTSpec(img_size=img, patch_size=patch, embed_dim=d, depth=depth, num_heads=heads,
                   **extra)
    return Variant(spec, doc or f"{label(spec)}, {img} px.")


# The named models. Each line registers a factory `name(**overrides)` whose config keys default
# to the spec (plsc/models/factories.py); converters name checkpoints after the first match.
VARIANTS = {
    "ViT_tiny_patch16_224": vit("tiny", 16, 224),
    "ViT_tiny_patch16_384": vit("tiny", 16, 384),
    "ViT_small_patch16_224": vit("small", 16, 224),
    "ViT_small_patch16_384": vit("small", 16, 384),
    "ViT_small_patch32_224": vit("small", 32, 224),
    "ViT_small_patch32_384": vit("small", 32, 384),
    "ViT_base_patch8_224": vit("base", 8, 224),
    "ViT_base_patch16_224": vit("base", 16, 224,
                                "ViT-B/16, 224 px (86,567,656 params with 1000 classes)."),
    "ViT_base_patch16_384": vit("base", 16, 384),
    "ViT_base_patch32_224": vit("base", 32, 224),
    "ViT_base_patch32_384": vit("base", 32, 384),
    "ViT_large_patch16_224": vit("large", 16, 224),
    "ViT_large_patch16_384": vit("large", 16, 384),
    "ViT_large_patch32_224": vit("large", 32, 224),
    "ViT_large_patch32_384": vit("large", 32, 384),
    "ViT_huge_patch14_224": vit("huge", 14, 224,
                                "ViT-H/14, 224 px (632,045,800 params with 1000 classes)."),
    # 384 is not a multiple of 14. PLSC builds this model at 384 and its conv silently ignores
    # the last 6 pixel rows/columns (27 x 27 patches); we keep that grid (pos_embed [1, 730,
    # 1280], so PLSC weights load) but state the real input size, 27 * 14 = 378.
    "ViT_huge_patch14_384": vit("huge", 14, 378,
                                "ViT-H/14 at the 384 setting: 378 px input (27 x 27 patches)."),
    "ViT_base_r50_s16_224": vit("base", 16, 224,
                                "R50+ViT-B/16, 224 px (98,659,112 params with 1000 classes).",
                                resnet_layers=R50_LAYERS),
    "ViT_base_r50_s16_384": vit("base", 16, 384, resnet_layers=R50_LAYERS),
    # DeiT (Touvron et al. 2021) models are these ViTs (class token, no pre-logits layer) trained
    # with the DeiT recipe; PLSC's names, so its DeiT configs build them unchanged.
    "DeiT_tiny_patch16_224": vit("tiny", 16, 224, "DeiT-Ti/16 (a ViT-Ti/16), 224 px."),
    "DeiT_small_patch16_224": vit("small", 16, 224, "DeiT-S/16 (a ViT-S/16), 224 px."),
    "DeiT_base_patch16_224": vit("base", 16, 224, "DeiT-B/16 (a ViT-B/16), 224 px."),
    "DeiT_base_patch16_384": vit("base", 16, 384, "DeiT-B/16 (a ViT-B/16), 384 px."),
    # NOT an official model: a small quick-start variant for 32 px data (8x8 patches of 4 px,
    # width 96, 4 blocks, 3 heads), sized so 2 CPU processes train it on SyntheticShapes in
    # under 4 minutes; ViT-Ti's width and depth would be ~7x slower there.
    "ViT_tiny_patch4_32": Variant(
        ViTSpec(img_size=32, patch_size=4, embed_dim=96, depth=4, num_heads=3),
        "Non-official small ViT for 32 px images: patch 4, embed 96, 3 heads, depth 4."),
}


def variant_name(spec):
    """The first variant whose architecture is `spec` up to the head (classes, pooling and
    pre-logits are per-config choices), or None."""
    for name, variant in VARIANTS.items():
        v = variant.spec
        if replace(spec, class_num=v.class_num, global_pool=v.global_pool,
                   representation_size=v.representation_size) == v:
            return name
    return None


def heads_by_width():
    """{width: heads} of the official sizes: how converters name heads for layouts that fuse
    q/k/v (timm, ours), whose fused matrix has the same shape for any head count."""
    return {d: heads for _, d, _, heads in SIZES.values()}
