"""Shared pieces of the converters: the architecture description, our state-dict layout,
checkpoint file I/O and all-or-nothing writes.

Every converter goes source arrays -> (validated against `Arch`) -> our state dict, or back.
`Arch` is inferred from array shapes, never from file names, so a converted file always
describes what is actually in it.
"""
import math
import os
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from ..errors import ConfigError, DataError

# Official ViT sizes: (hidden, depth, heads, mlp) -> the <size> in ViT_<size>_patch<P>_<img>.
SIZES = {
    (192, 12, 3, 768): "tiny",
    (384, 12, 6, 1536): "small",
    (768, 12, 12, 3072): "base",
    (1024, 24, 16, 4096): "large",
    (1280, 32, 16, 5120): "huge",
}
# Heads of the official sizes by hidden width: the only way to name heads for formats that fuse
# q/k/v (timm, ours) since the fused matrix has the same shape for any head count.
HEADS_BY_WIDTH = {192: 3, 384: 6, 768: 12, 1024: 16, 1280: 16}
R50_LAYERS = (3, 4, 9)


@dataclass
class Arch:
    """What a checkpoint contains, in model terms."""

    embed_dim: int
    depth: int
    num_heads: int
    mlp_dim: int
    patch_size: int  # total stride from pixels to tokens (16 for R50+ViT-B/16)
    in_chans: int
    grid: tuple  # token grid (h, w)
    class_num: int
    global_pool: str = "token"  # 'token' | 'gap'
    representation_size: Optional[int] = None
    resnet_layers: Optional[tuple] = None  # hybrid stem units per stage, e.g. (3, 4, 9)
    resnet_width: int = 64
    extra: dict = field(default_factory=dict)  # format notes for the summary

    @property
    def img_size(self):
        return self.grid[0] * self.patch_size

    @property
    def num_prefix_tokens(self):
        return 1 if self.global_pool == "token" else 0

    @property
    def backbone_stride(self):
        """Pixels per stem output position: root conv /2, max-pool /2, each later stage /2."""
        if self.resnet_layers is None:
            return 1
        return 4 * 2 ** (len(self.resnet_layers) - 1)

    @property
    def embed_kernel(self):
        return self.patch_size // self.backbone_stride

    @property
    def embed_in_chans(self):
        """Channels seen by the patch-embedding conv (stem output for hybrids)."""
        if self.resnet_layers is None:
            return self.in_chans
        return 4 * self.resnet_width * 2 ** (len(self.resnet_layers) - 1)

    def stage_widths(self):
        return [self.resnet_width * 2 ** s for s in range(len(self.resnet_layers))]


def state_shapes(arch):
    """{name: shape} of OUR state dict (plsc/PLSC names, Linear [in, out], Conv OIHW)."""
    d, m = arch.embed_dim, arch.mlp_dim
    k = arch.embed_kernel
    s = {}
    if arch.resnet_layers is not None:
        pre = "patch_embed.backbone."
        w = arch.resnet_width
        s[pre + "root.conv.weight"] = (w, arch.in_chans, 7, 7)
        s[pre + "root.gn.weight"] = s[pre + "root.gn.bias"] = (w,)
        cin = w
        for si, (units, width) in enumerate(zip(arch.resnet_layers, arch.stage_widths())):
            for ui in range(units):
                u = f"{pre}stages.{si}.units.{ui}."
                if ui == 0:
                    s[u + "conv_proj.weight"] = (4 * width, cin, 1, 1)
                    s[u + "gn_proj.weight"] = s[u + "gn_proj.bias"] = (4 * width,)
                s[u + "conv1.weight"] = (width, cin, 1, 1)
                s[u + "gn1.weight"] = s[u + "gn1.bias"] = (width,)
                s[u + "conv2.weight"] = (width, width, 3, 3)
                s[u + "gn2.weight"] = s[u + "gn2.bias"] = (width,)
                s[u + "conv3.weight"] = (4 * width, width, 1, 1)
                s[u + "gn3.weight"] = s[u + "gn3.bias"] = (4 * width,)
                cin = 4 * width
    s["patch_embed.proj.weight"] = (d, arch.embed_in_chans, k, k)
    s["patch_embed.proj.bias"] = (d,)
    if arch.global_pool == "token":
        s["cls_token"] = (1, 1, d)
    s["pos_embed"] = (1, arch.grid[0] * arch.grid[1] + arch.num_prefix_tokens, d)
    for i in range(arch.depth):
        b = f"blocks.{i}."
        s[b + "norm1.weight"] = s[b + "norm1.bias"] = (d,)
        s[b + "attn.qkv.weight"], s[b + "attn.qkv.bias"] = (d, 3 * d), (3 * d,)
        s[b + "attn.proj.weight"], s[b + "attn.proj.bias"] = (d, d), (d,)
        s[b + "norm2.weight"] = s[b + "norm2.bias"] = (d,)
        s[b + "mlp.fc1.weight"], s[b + "mlp.fc1.bias"] = (d, m), (m,)
        s[b + "mlp.fc2.weight"], s[b + "mlp.fc2.bias"] = (m, d), (d,)
    s["norm.weight"] = s["norm.bias"] = (d,)
    head_in = d
    if arch.representation_size:
        r = arch.representation_size
        s["head0.weight"], s["head0.bias"] = (d, r), (r,)
        head_in = r
    s["head.weight"], s["head.bias"] = (head_in, arch.class_num), (arch.class_num,)
    return s


def square_grid(n_tokens, what):
    g = math.isqrt(n_tokens)
    if g * g != n_tokens:
        raise ConfigError(f"{what} has {n_tokens} grid positions, which is not a square grid")
    return (g, g)


def name_list(names, limit=20):
    """'a, b, c' — long lists are cut so the error stays one readable line."""
    names = list(names)
    more = f" ... and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def check_layout(arrays, expected, arch_name, source):
    """Compare {name: array} with {name: shape}; one-line ConfigError naming what is wrong."""
    missing = [k for k in expected if k not in arrays]
    unexpected = [k for k in arrays if k not in expected]
    if missing:
        raise ConfigError(f"{source}: missing arrays for {arch_name}: {name_list(missing)}")
    if unexpected:
        raise ConfigError(f"{source}: unexpected arrays for {arch_name}: "
                          f"{name_list(unexpected)}")
    for k, shape in expected.items():
        if tuple(arrays[k].shape) != tuple(shape):
            raise ConfigError(f"{source}: array '{k}' has shape {tuple(arrays[k].shape)}, "
                              f"expected {tuple(shape)} for {arch_name}")


def arch_from_state(state, source, num_heads=None, heads_hint="pass --num-heads", check=True):
    """Infer `Arch` from one of OUR state dicts (or a timm dict already renamed to ours)."""
    def need(name, ndim):
        if name not in state:
            raise ConfigError(f"{source}: missing arrays: {name}")
        if len(state[name].shape) != ndim:
            raise ConfigError(f"{source}: array '{name}' has shape {tuple(state[name].shape)}, "
                              f"expected {ndim} dimensions")
        return tuple(state[name].shape)

    d, cin, k, k2 = need("patch_embed.proj.weight", 4)
    if k != k2:
        raise ConfigError(f"{source}: array 'patch_embed.proj.weight' has shape "
                          f"{(d, cin, k, k2)}, expected square patches")
    depth = 0
    while f"blocks.{depth}.attn.qkv.weight" in state:
        depth += 1
    if depth == 0:
        raise ConfigError(f"{source}: missing arrays: blocks.0.attn.qkv.weight")
    m = need("blocks.0.mlp.fc1.weight", 2)[1]
    if num_heads is None:
        if d not in HEADS_BY_WIDTH:
            raise ConfigError(f"{source}: cannot tell the number of heads for width {d} "
                              f"(q, k and v are fused); {heads_hint}")
        num_heads = HEADS_BY_WIDTH[d]
    pool = "token" if "cls_token" in state else "gap"
    prefix = 1 if pool == "token" else 0
    n = need("pos_embed", 3)[1]
    grid = square_grid(n - prefix, f"{source}: 'pos_embed' {tuple(state['pos_embed'].shape)}")
    rep = need("head0.weight", 2)[1] if "head0.weight" in state else None
    classes = need("head.weight", 2)[1]
    layers, width, in_chans, stride = None, 64, cin, 1
    if "patch_embed.backbone.root.conv.weight" in state:
        width, in_chans = need("patch_embed.backbone.root.conv.weight", 4)[:2]
        layers = []
        while f"patch_embed.backbone.stages.{len(layers)}.units.0.conv1.weight" in state:
            s, u = len(layers), 0
            while f"patch_embed.backbone.stages.{s}.units.{u}.conv1.weight" in state:
                u += 1
            layers.append(u)
        layers = tuple(layers)
        stride = 4 * 2 ** (len(layers) - 1)
    arch = Arch(embed_dim=d, depth=depth, num_heads=num_heads, mlp_dim=m, patch_size=k * stride,
                in_chans=in_chans, grid=grid, class_num=classes, global_pool=pool,
                representation_size=rep, resnet_layers=layers, resnet_width=width)
    if check:
        check_layout(state, state_shapes(arch), arch_label(arch), source)
    return arch


# ----------------------------------------------------------------------------- naming / config
def arch_label(arch, with_size=True):
    """Short human name: 'ViT-B/16 224px', 'R50+ViT-B/16 384px', 'ViT(d=32, ...) 16px'."""
    letters = {"tiny": "Ti", "small": "S", "base": "B", "large": "L", "huge": "H"}
    size = SIZES.get((arch.embed_dim, arch.depth, arch.num_heads, arch.mlp_dim))
    core = (f"ViT-{letters[size]}/{arch.patch_size}" if size else
            f"ViT(d={arch.embed_dim}, depth={arch.depth}, heads={arch.num_heads}, "
            f"mlp={arch.mlp_dim}, patch={arch.patch_size})")
    if arch.resnet_layers is not None:
        core = f"R{arch.resnet_layers}x{arch.resnet_width}+{core}"
        if arch.resnet_layers == R50_LAYERS and arch.resnet_width == 64:
            core = "R50+" + core.split("+", 1)[1]
    return f"{core} {arch.img_size}px" if with_size else core


def factory_name(arch):
    """Name of a registered factory whose preset builds exactly `arch`, or None.

    Data-driven: compares the factories' defaults (their `preset`) with the architecture, so
    e.g. ViT-H/14 at the "384" setting (378 px, see vit.py) is found too.
    """
    from .. import models  # noqa: F401  (registers the factories)
    from ..registry import MODELS
    if arch.grid[0] != arch.grid[1]:
        return None
    want = {"img_size": arch.img_size, "patch_size": arch.patch_size, "in_chans": arch.in_chans,
            "embed_dim": arch.embed_dim, "depth": arch.depth, "num_heads": arch.num_heads,
            "mlp_ratio": arch.mlp_dim / arch.embed_dim, "qkv_bias": True}
    if arch.resnet_layers is not None:
        want.update(resnet_layers=list(arch.resnet_layers), resnet_width=arch.resnet_width)
    for name in MODELS.names():
        if getattr(MODELS.get(name), "preset", None) is None:
            continue
        params = MODELS.parameters(name) or {}
        if ("resnet_layers" in params) != (arch.resnet_layers is not None):
            continue
        defaults = {k: p.default for k, p in params.items()}
        if isinstance(defaults.get("resnet_layers"), tuple):
            defaults["resnet_layers"] = list(defaults["resnet_layers"])
        if all(defaults.get(k) == v for k, v in want.items()):
            return name
    return None


def model_config(arch, act="gelu_tanh", epsilon=1e-6):
    """The `Model:` config section that rebuilds `arch` (factory name + overrides when one fits)."""
    name = factory_name(arch)
    cfg = {"name": name}
    if name is None:
        cfg["name"] = "VisionTransformer" if arch.resnet_layers is None else "ViTHybrid"
        cfg.update(img_size=arch.img_size, patch_size=arch.patch_size, in_chans=arch.in_chans,
                   embed_dim=arch.embed_dim, depth=arch.depth, num_heads=arch.num_heads,
                   mlp_ratio=arch.mlp_dim / arch.embed_dim)
        if arch.resnet_layers is not None:
            cfg.update(resnet_layers=list(arch.resnet_layers), resnet_width=arch.resnet_width)
    cfg["class_num"] = arch.class_num
    if arch.global_pool != "token":
        cfg["global_pool"] = arch.global_pool
    if arch.representation_size:
        cfg["representation_size"] = arch.representation_size
    cfg["act"] = act
    cfg["epsilon"] = epsilon
    return cfg


def summary(arch, state, dst):
    n = sum(int(np.prod(v.shape)) for v in state.values())
    name = factory_name(arch) or arch_label(arch, with_size=False)
    pool = "token" if arch.global_pool == "token" else "gap"
    rep = f", pre-logits {arch.representation_size}" if arch.representation_size else ""
    return (f"converted {name}: {n:,} params, {arch.class_num} classes, {arch.img_size}px, "
            f"{pool} pooling{rep} -> {dst}")


# ----------------------------------------------------------------------------- files
def require_file(path, what="checkpoint"):
    if not os.path.exists(path):
        raise DataError(f"{what} not found: {path}")
    if os.path.isdir(path):
        raise DataError(f"{what} is a directory, expected a file: {path}")




def strip_pdparams(prefix):
    return prefix[: -len(".pdparams")] if prefix.endswith(".pdparams") else prefix




def dump_model_yaml(model_cfg):
    import yaml
    return yaml.safe_dump({"Model": model_cfg}, sort_keys=False, default_flow_style=None)


def write_outputs(files):
    """Write {path: writer(tmp_path)} all-or-nothing.

    Every file is first written to a temporary name next to its destination; only when all of
    them succeeded are they renamed into place, so an error never leaves a partial output.
    """
    tmps = {}
    try:
        for path, writer in files.items():
            d = os.path.dirname(os.path.abspath(path))
            if not os.path.isdir(d):
                raise DataError(f"output directory does not exist: {d}")
            tmp = os.path.join(d, f".{os.path.basename(path)}.tmp{os.getpid()}")
            tmps[path] = tmp
            writer(tmp)
        for path, tmp in tmps.items():
            os.replace(tmp, path)
    finally:
        for tmp in tmps.values():
            if os.path.exists(tmp):
                os.remove(tmp)




def text_writer(text):
    def write(tmp):
        with open(tmp, "w") as f:
            f.write(text)
    return write
