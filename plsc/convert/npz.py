"""Official Google ViT / R50+ViT `.npz` checkpoints <-> plsc state dicts.

Name mapping: see npz_names.py.

Accepted on import: pre-Linen block names (as released) and Linen names (MultiHeadDotProduct-
Attention_0, LayerNorm_1, MlpBlock_0; LayerNorm_0 is norm1 in both); prefixes `params/`,
`params/img/` (two-tower files: the image tower is converted, the rest ignored) and `opt/target/`
(optimizer-state files: the rest is optimizer state and ignored); big_vision's scanned layout
(`Transformer/encoderblock/...` stacked along a leading depth axis); bfloat16 stored as 2-byte
void records, float16 and float64 (all become float32). Export always writes the released layout:
pre-Linen names, no prefix, class row inside the pos-embedding, GroupNorm params (1,1,1,C) like the
released R50+ViT-B/16 file, float32, plain `np.savez`.
"""
import os
import re
import zipfile

import numpy as np

from ..errors import ConfigError, DataError
from .. import vit_spec
from ..weights import read_state, save_pickle
from .common import (Arch, arch_from_state, arch_label, check_layout, dump_model_yaml,
                     model_config, name_list, require_file, square_grid,
                     strip_pdparams, summary, text_writer, write_outputs)
from .npz_names import ATT, MLP, official_shapes, official_to_ours, ours_to_official

PRE_LINEN = {"MultiHeadDotProductAttention_0": "MultiHeadDotProductAttention_1",
             "LayerNorm_1": "LayerNorm_2", "MlpBlock_0": "MlpBlock_3"}
# Checked in order; the first one holding embedding/kernel wins. Arrays outside the chosen
# prefix are ignored only where they are known to be something else (text tower, optimizer).
PREFIXES = ("params/img/", "params/", "opt/target/", "")
IGNORE_OUTSIDE = ("params/img/", "opt/target/")


# ----------------------------------------------------------------------------- reading
def decode_array(a, name, source):
    """float32 copy of a stored array; bf16 arrives as 2-byte void records (np.savez of
    ml_dtypes.bfloat16 writes descr '|V2'): its bits are the top half of a float32."""
    if a.dtype.kind == "V" and a.dtype.itemsize == 2:
        return (np.ascontiguousarray(a).view(np.uint16).astype(np.uint32) << 16).view(np.float32)
    if a.dtype.kind != "f":
        raise DataError(f"{source}: array '{name}' has dtype {a.dtype}, expected floating point")
    return np.ascontiguousarray(a, dtype=np.float32)


def read_npz(path):
    """{key: raw array} of an npz archive, refusing pickled (object) arrays."""
    require_file(path)
    if not zipfile.is_zipfile(path):
        raise DataError(f"{path}: not an npz archive (not a zip file)")
    arrays = {}
    try:
        with np.load(path, allow_pickle=False) as z:
            for key in z.files:
                try:
                    value = z[key]
                except ValueError as e:
                    if "allow_pickle" in str(e) or "pickle" in str(e).lower():
                        raise DataError(f"{path}: array '{key}' contains pickled objects; "
                                        f"refusing to load") from None
                    raise DataError(f"{path}: array '{key}' is unreadable: {e}") from None
                if not isinstance(value, np.ndarray):  # a zip member that is not a .npy file
                    raise DataError(f"{path}: member '{key}' is not a .npy array; "
                                    f"not an npz archive")
                arrays[key] = value
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise DataError(f"{path}: not a readable npz archive ({e})") from None
    if not arrays:
        raise DataError(f"{path}: the npz archive holds no arrays")
    return arrays


def canonicalize(raw, source):
    """Released-layout names and float32 values for any accepted variant.

    Returns (params, notes): `params` uses pre-Linen names without prefix; a big_vision
    top-level `pos_embedding` keeps its name (it means something different: no class row).
    """
    prefix = next((p for p in PREFIXES if p + "embedding/kernel" in raw), None)
    if prefix is None:
        raise ConfigError(f"{source}: missing arrays: embedding/kernel (not a ViT checkpoint?)")
    notes = []
    outside = [k for k in raw if not k.startswith(prefix)]
    if outside:
        if prefix not in IGNORE_OUTSIDE:
            raise ConfigError(f"{source}: unexpected arrays outside '{prefix}': "
                              f"{name_list(outside)}")
        notes.append(f"ignored {len(outside)} arrays outside '{prefix}'")
    if prefix:
        notes.append(f"prefix '{prefix}'")
    params = {}
    for key, a in raw.items():
        if not key.startswith(prefix):
            continue
        key = key[len(prefix):]
        a = decode_array(a, prefix + key, source)
        if key.startswith("Transformer/encoderblock/"):  # big_vision scan: stacked over depth
            rest = key[len("Transformer/encoderblock/"):]
            for i in range(a.shape[0]):
                params[f"Transformer/encoderblock_{i}/{rest}"] = np.ascontiguousarray(a[i])
            if "scanned layers" not in notes:
                notes.append("scanned layers")
            continue
        params[key] = a
    if any(raw[k].dtype.kind == "V" for k in raw if k.startswith(prefix)):
        notes.append("bfloat16")
    # Linen names, decided per block so that a stray name is reported rather than renamed.
    blocks = {}
    for key in params:
        m = re.match(r"Transformer/encoderblock_(\d+)/([^/]+)/", key)
        if m:
            blocks.setdefault(m.group(1), set()).add(m.group(2))
    linen = {b for b, mods in blocks.items() if "MlpBlock_0" in mods
             or "MultiHeadDotProductAttention_0" in mods}
    if linen:
        notes.append("Linen names")
        renamed = {}
        for key, a in params.items():
            parts = key.split("/")
            if len(parts) > 2 and parts[1].startswith("encoderblock_") \
                    and parts[1][len("encoderblock_"):] in linen:
                parts[2] = PRE_LINEN.get(parts[2], parts[2])
            renamed["/".join(parts)] = a
        params = renamed
    # Old Flax GroupNorm params are (1,1,1,C).
    for key, a in params.items():
        is_gn = re.search(r"(^|/)gn_?\w*/(scale|bias)$", key)
        if is_gn and a.ndim == 4 and a.shape[:3] == (1, 1, 1):
            params[key] = a.reshape(-1)
    return params, notes


# ----------------------------------------------------------------------------- architecture
def _anchor(params, key, ndim, meaning, source):
    if key not in params:
        raise ConfigError(f"{source}: missing arrays: {key}")
    shape = tuple(params[key].shape)
    if len(shape) != ndim:
        raise ConfigError(f"{source}: array '{key}' has shape {shape}, expected {meaning}")
    return shape


def infer_arch(params, source):
    """Architecture from array shapes (see module docstring for what each array tells)."""
    if any(k.startswith("MAPHead_0/") for k in params):
        raise ConfigError(f"{source}: MAP-head pooling (MAPHead_0) is not supported; "
                          f"only 'token' and 'gap' pooling")
    kh, kw, cin, d = _anchor(params, "embedding/kernel", 4,
                             "(patch, patch, in_channels, hidden)", source)
    if kh != kw:
        raise ConfigError(f"{source}: array 'embedding/kernel' has shape {(kh, kw, cin, d)}, "
                          f"expected square patches (patch, patch, in_channels, hidden)")
    layers, width, in_chans, stride = None, 64, cin, 1
    if "conv_root/kernel" in params:
        _, _, in_chans, width = _anchor(params, "conv_root/kernel", 4,
                                        "(7, 7, in_channels, width)", source)
        layers = []
        while f"block{len(layers) + 1}/unit1/conv1/kernel" in params:
            s, u = len(layers) + 1, 1
            while f"block{s}/unit{u + 1}/conv1/kernel" in params:
                u += 1
            layers.append(u)
        if not layers:
            raise ConfigError(f"{source}: missing arrays: block1/unit1/conv1/kernel")
        layers = tuple(layers)
        stride = vit_spec.stem_stride(layers)
    depth = 0
    while f"Transformer/encoderblock_{depth}/LayerNorm_0/scale" in params:
        depth += 1
    if depth == 0:
        raise ConfigError(f"{source}: missing arrays: Transformer/encoderblock_0/LayerNorm_0/scale")
    b0 = "Transformer/encoderblock_0/"
    _, heads, dh = _anchor(params, b0 + ATT + "/query/kernel", 3,
                           "(hidden, heads, head_dim)", source)
    _, mlp = _anchor(params, b0 + MLP + "/Dense_0/kernel", 2, "(hidden, mlp_dim)", source)
    pool = "token" if "cls" in params else "gap"
    big_vision_pos = "pos_embedding" in params
    pos_key = "pos_embedding" if big_vision_pos else "Transformer/posembed_input/pos_embedding"
    n = _anchor(params, pos_key, 3, "(1, tokens, hidden)", source)[1]
    n_grid = n - (1 if pool == "token" and not big_vision_pos else 0)
    grid = square_grid(n_grid, f"{source}: '{pos_key}' {tuple(params[pos_key].shape)}")
    rep = None
    if "pre_logits/kernel" in params:
        rep = _anchor(params, "pre_logits/kernel", 2, "(hidden, representation)", source)[1]
    classes = _anchor(params, "head/kernel", 2, "(features, classes)", source)[1]
    if heads * dh != d:
        raise ConfigError(f"{source}: array '{b0 + ATT}/query/kernel' has shape "
                          f"{tuple(params[b0 + ATT + '/query/kernel'].shape)}, expected "
                          f"(hidden, heads, head_dim) with heads * head_dim = hidden = {d}")
    arch = Arch(embed_dim=d, depth=depth, num_heads=heads, mlp_dim=mlp, patch_size=kh * stride,
                in_chans=in_chans, grid=grid, class_num=classes, global_pool=pool,
                representation_size=rep, resnet_layers=layers, resnet_width=width)
    arch.extra["big_vision_pos"] = big_vision_pos
    check_layout(params, official_shapes(arch), arch_label(arch), source)
    return arch


# ----------------------------------------------------------------------------- entry points
def load_npz_as_state(path):
    """(our state dict, Arch, canonical official params) of an official npz file; the
    format notes (prefix, Linen names, bf16, ...) are in arch.extra['notes']."""
    raw = read_npz(path)
    params, notes = canonicalize(raw, path)
    arch = infer_arch(params, path)
    arch.extra["notes"] = notes
    return official_to_ours(params, arch), arch, params


def npz_to_paddle(src, dst_prefix, check=False, log=print):
    """`tools/convert.py npz2paddle`: write DST.pdparams + DST.yaml; returns the summary dict."""
    state, arch, params = load_npz_as_state(src)
    dst_prefix = strip_pdparams(dst_prefix)
    cfg = model_config(arch)
    result = {"arch": arch, "model_config": cfg, "state": state}
    if check:
        from .reference import check_conversion
        result["check"] = check_conversion(params, state, cfg, arch, log=log)
    dst = dst_prefix + ".pdparams"
    write_outputs({dst: lambda tmp: save_pickle(state, tmp),
                   dst_prefix + ".yaml": text_writer(dump_model_yaml(cfg))})
    notes = arch.extra.get("notes")
    log(summary(arch, state, dst) + (f" ({'; '.join(notes)})" if notes else ""))
    return result


def read_model_config(path):
    """The `Model:` section of a YAML written by the converters (or any plsc config)."""
    from ..config import load_yaml  # the project's loader: `epsilon: 1e-6` is a float

    require_file(path, "model config")
    doc = load_yaml(path)
    if not isinstance(doc, dict) or not isinstance(doc.get("Model"), dict):
        raise ConfigError(f"{path}: expected a 'Model:' section")
    return dict(doc["Model"])


def resolve_model_kwargs(cfg):
    """Config keys + the registered factory's defaults (so `num_heads` of ViT_base_... is known)."""
    from .. import models  # noqa: F401
    from ..registry import MODELS
    merged = {}
    params = MODELS.parameters(cfg["name"]) if cfg.get("name") in MODELS else None
    for key, p in (params or {}).items():
        if p.default is not p.empty:
            merged[key] = p.default
    merged.update({k: v for k, v in cfg.items() if k != "name"})
    return merged


def paddle_to_npz(src_prefix, dst, model_config_path=None, log=print):
    """`tools/convert.py paddle2npz`: our/PLSC .pdparams -> released-layout npz."""
    src_prefix = strip_pdparams(src_prefix)
    path = src_prefix + ".pdparams"
    state = read_state(path)
    if model_config_path is None and os.path.exists(src_prefix + ".yaml"):
        model_config_path = src_prefix + ".yaml"
    heads = None
    if model_config_path is not None:
        kw = resolve_model_kwargs(read_model_config(model_config_path))
        heads = kw.get("num_heads")
        act, eps = kw.get("act"), kw.get("epsilon")
        differ = [f"{k}={v}" for k, v, official in (("act", act, "gelu_tanh"), ("epsilon", eps, 1e-6))
                  if v is not None and v != official]
        if differ:  # name only what really differs from the official numerics
            log(f"warning: the model uses {', '.join(differ)}; the official code runs "
                f"gelu_tanh and epsilon 1e-6, so its outputs will differ slightly")
    arch = arch_from_state(state, path, num_heads=heads,
                           heads_hint="pass --model-config with Model.num_heads")
    if arch.embed_dim % arch.num_heads:
        raise ConfigError(f"{path}: num_heads {arch.num_heads} does not divide the width "
                          f"{arch.embed_dim}")
    official = ours_to_official(state, arch)

    def write(tmp):
        with open(tmp, "wb") as f:  # a handle: np.savez would append '.npz' to a tmp name
            np.savez(f, **official)

    write_outputs({dst: write})
    log(f"exported {arch_label(arch)}: {len(official)} arrays, "
        f"{sum(a.size for a in official.values()):,} params -> {dst}")
    return official
