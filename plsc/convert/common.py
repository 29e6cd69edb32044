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

from .. import vit_spec
from ..errors import ConfigError, DataError

# Both derived from the model family's table (plsc/vit_spec.py):
# (hidden, depth, heads, mlp) of the official sizes -> the <size> in ViT_<size>_patch<P>_<img>,
SIZES = {(d, depth, heads, 4 * d): name for name, (_, d, depth, heads) in vit_spec.SIZES.items()}
# and their heads by width: the only way to name heads for formats that fuse q/k/v (timm, ours).
HEADS_BY_WIDTH = vit_spec.heads_by_width()
R50_LAYERS = vit_spec.R50_LAYERS


@dataclass
class Arch:
    """What a checkpoint contains, in model terms: a ViTSpec as read from array shapes (the
    token grid instead of the image size, the MLP width instead of a ratio) + format notes."""

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
    def spec(self):
        """The model family's description; every derived size below comes from it."""
        return vit_spec.ViTSpec(
            img_size=self.img_size, patch_size=self.patch_size, in_chans=self.in_chans,
            class_num=self.class_num, embed_dim=self.embed_dim, depth=self.depth,
            num_heads=self.num_heads, mlp_ratio=self.mlp_dim / self.embed_dim,
            representation_size=self.representation_size, global_pool=self.global_pool,
            resnet_layers=None if self.resnet_layers is None else tuple(self.resnet_layers),
            resnet_width=self.resnet_width)

    @property
    def img_size(self):
        return self.grid[0] * self.patch_size

    @property
    def num_prefix_tokens(self):
        return self.spec.num_prefix_tokens

    @property
    def embed_kernel(self):
        return self.spec.embed_kernel

    @property
    def embed_in_chans(self):
        """Channels seen by the patch-embedding conv (stem output for hybrids)."""
        return self.spec.embed_in_chans


def state_shapes(arch):
    """{name: shape} of OUR state dict (plsc/PLSC names, Linear [in, out], Conv OIHW)."""
    return vit_spec.state_shapes(arch.spec)


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
        stride = vit_spec.stem_stride(layers)
    arch = Arch(embed_dim=d, depth=depth, num_heads=num_heads, mlp_dim=m, patch_size=k * stride,
                in_chans=in_chans, grid=grid, class_num=classes, global_pool=pool,
                representation_size=rep, resnet_layers=layers, resnet_width=width)
    if check:
        check_layout(state, state_shapes(arch), arch_label(arch), source)
    return arch


# ----------------------------------------------------------------------------- naming / config
def arch_label(arch, with_size=True):
    """Short human name: 'ViT-B/16 224px', 'R50+ViT-B/16 384px', 'ViT(d=32, ...) 16px'."""
    core = vit_spec.label(arch.spec)
    return f"{core} {arch.img_size}px" if with_size else core


def factory_name(arch):
    """Name of the named variant (vit_spec.VARIANTS) that builds exactly `arch`, or None."""
    if arch.grid[0] != arch.grid[1]:
        return None
    return vit_spec.variant_name(arch.spec)


def model_config(arch, act="gelu_tanh", epsilon=1e-6):
    """The `Model:` config section that rebuilds `arch` (factory name + overrides when one fits)."""
    name = factory_name(arch)
    cfg = {"name": name}
    if name is None:
        spec = arch.spec.config()
        cfg["name"] = "VisionTransformer" if arch.resnet_layers is None else "ViTHybrid"
        cfg.update({k: spec[k] for k in ("img_size", "patch_size", "in_chans", "embed_dim",
                                          "depth", "num_heads", "mlp_ratio")})
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
