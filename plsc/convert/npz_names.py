"""Our state-dict names <-> official Google ViT / R50+ViT `.npz` names, and the array
reshapes between the two layouts (the reading/writing of files is in npz.py).


Name mapping (official -> ours). Official Dense kernels are [in, out] like Paddle's Linear, so
only convolutions are transposed (HWIO -> OIHW) and attention tensors reshaped:

    embedding/kernel (p,p,C,D), bias           patch_embed.proj.weight (D,C,p,p) [T 3,2,0,1], .bias
    cls (1,1,D)                                cls_token
    Transformer/posembed_input/pos_embedding   pos_embed (1, N(+1), D)
    pos_embedding  (big_vision, grid rows only) pos_embed with a zero class row in front (the
                                               big_vision class token gets no position, so
                                               cls + 0 computes the same function)
    Transformer/encoderblock_{i}/
      LayerNorm_0/{scale,bias}                 blocks.{i}.norm1.{weight,bias}
      MultiHeadDotProductAttention_1/
        {query,key,value}/kernel (D,H,Dh)      blocks.{i}.attn.qkv.weight (D,3D) = [q|k|v] columns,
        {query,key,value}/bias (H,Dh)          blocks.{i}.attn.qkv.bias (3D,)   each head-major
        out/kernel (H,Dh,D), out/bias          blocks.{i}.attn.proj.weight (D,D), .bias
      LayerNorm_2/{scale,bias}                 blocks.{i}.norm2.{weight,bias}
      MlpBlock_3/Dense_0/{kernel,bias}         blocks.{i}.mlp.fc1.{weight,bias}
      MlpBlock_3/Dense_1/{kernel,bias}         blocks.{i}.mlp.fc2.{weight,bias}
    Transformer/encoder_norm/{scale,bias}      norm.{weight,bias}
    pre_logits/{kernel,bias}                   head0.{weight,bias}
    head/{kernel,bias}                         head.{weight,bias}
  R50 hybrid stem (S stages, U units each; official indices are 1-based, ours 0-based):
    conv_root/kernel (7,7,C,W)                 patch_embed.backbone.root.conv.weight (W,C,7,7)
    gn_root/{scale,bias} (W,) or (1,1,1,W)     patch_embed.backbone.root.gn.{weight,bias} (W,)
    block{s}/unit{u}/conv{1,2,3}/kernel        patch_embed.backbone.stages.{s-1}.units.{u-1}
                                                 .conv{1,2,3}.weight
    block{s}/unit{u}/gn{1,2,3}/{scale,bias}    ...units.{u-1}.gn{1,2,3}.{weight,bias}
    block{s}/unit1/conv_proj/kernel, gn_proj   ...units.0.conv_proj.weight, .gn_proj.{weight,bias}

"""
import re

import numpy as np

from .common import state_shapes

# The released (pre-Linen) block names; npz.canonicalize maps Linen names onto these.
ATT, LN2, MLP = "MultiHeadDotProductAttention_1", "LayerNorm_2", "MlpBlock_3"


def _blk(m):
    return f"Transformer/encoderblock_{m[1]}/"


def _unit(m):  # official stem indices are 1-based, ours 0-based
    return f"block{int(m[1]) + 1}/unit{int(m[2]) + 1}/"


NORM = {"weight": "scale", "bias": "bias"}
DENSE = {"weight": "kernel", "bias": "bias"}
QKV = ("query", "key", "value")
POS = "Transformer/posembed_input/pos_embedding"
# Our name (regex, whole name) -> official name, and how the array changes: 'conv' HWIO <-> OIHW,
# 'gn' (C,) <-> released (1,1,1,C), 'qkv' one fused array <-> query/key/value ('{}' in the
# name), 'out' (D, D) <-> (H, Dh, D), 'same' unchanged. Our names come from vit_spec.
RULES = tuple((re.compile(r), name, kind) for r, name, kind in (
    (r"patch_embed\.backbone\.root\.conv\.weight", lambda m: "conv_root/kernel", "conv"),
    (r"patch_embed\.backbone\.root\.gn\.(weight|bias)", lambda m: f"gn_root/{NORM[m[1]]}", "gn"),
    (r"patch_embed\.backbone\.stages\.(\d+)\.units\.(\d+)\.(conv\w*)\.weight",
     lambda m: f"{_unit(m)}{m[3]}/kernel", "conv"),
    (r"patch_embed\.backbone\.stages\.(\d+)\.units\.(\d+)\.(gn\w*)\.(weight|bias)",
     lambda m: f"{_unit(m)}{m[3]}/{NORM[m[4]]}", "gn"),
    (r"patch_embed\.proj\.weight", lambda m: "embedding/kernel", "conv"),
    (r"patch_embed\.proj\.bias", lambda m: "embedding/bias", "same"),
    (r"cls_token", lambda m: "cls", "same"),
    (r"pos_embed", lambda m: POS, "same"),
    (r"blocks\.(\d+)\.norm1\.(weight|bias)", lambda m: f"{_blk(m)}LayerNorm_0/{NORM[m[2]]}",
     "same"),
    (r"blocks\.(\d+)\.attn\.qkv\.(weight|bias)", lambda m: f"{_blk(m)}{ATT}/{{}}/{DENSE[m[2]]}",
     "qkv"),
    (r"blocks\.(\d+)\.attn\.proj\.weight", lambda m: f"{_blk(m)}{ATT}/out/kernel", "out"),
    (r"blocks\.(\d+)\.attn\.proj\.bias", lambda m: f"{_blk(m)}{ATT}/out/bias", "same"),
    (r"blocks\.(\d+)\.norm2\.(weight|bias)", lambda m: f"{_blk(m)}{LN2}/{NORM[m[2]]}", "same"),
    (r"blocks\.(\d+)\.mlp\.fc([12])\.(weight|bias)",
     lambda m: f"{_blk(m)}{MLP}/Dense_{int(m[2]) - 1}/{DENSE[m[3]]}", "same"),
    (r"norm\.(weight|bias)", lambda m: f"Transformer/encoder_norm/{NORM[m[1]]}", "same"),
    (r"head0\.(weight|bias)", lambda m: f"pre_logits/{DENSE[m[1]]}", "same"),
    (r"head\.(weight|bias)", lambda m: f"head/{DENSE[m[1]]}", "same"),
))


def name_map(arch):
    """[(our name, [official names], kind)] for every array of `arch`, in our layout's order."""
    out = []
    for ours in state_shapes(arch):
        name, kind = next((name(m), kind) for r, name, kind in RULES
                          for m in [r.fullmatch(ours)] if m)
        out.append((ours, [name.format(n) for n in QKV] if kind == "qkv" else [name], kind))
    return out


def _to_official(a, kind, heads):
    """One of our arrays -> its official array(s), in the released layout."""
    if kind == "conv":
        return [np.ascontiguousarray(a.transpose(2, 3, 1, 0))]
    if kind == "gn":
        return [a.reshape(1, 1, 1, -1)]
    if kind == "qkv":  # columns q | k | v, each head-major
        d = a.shape[-1] // 3
        split = a.reshape(-1, 3, heads, d // heads) if a.ndim == 2 else a.reshape(3, heads, -1)
        return [split[:, j] if a.ndim == 2 else split[j] for j in range(3)]
    if kind == "out":
        return [a.reshape(heads, -1, a.shape[1])]
    return [a]


def _to_ours(arrays, kind):
    """The official array(s) of one of our names -> our array."""
    if kind == "conv":
        return np.ascontiguousarray(arrays[0].transpose(3, 2, 0, 1))
    if kind == "gn":
        return arrays[0].reshape(-1)
    if kind == "qkv":
        d = arrays[0].shape[0] if arrays[0].ndim == 3 else None
        return np.concatenate([x.reshape(d, -1) if d else x.reshape(-1) for x in arrays],
                              axis=1 if d else 0)
    if kind == "out":
        return arrays[0].reshape(-1, arrays[0].shape[-1])
    return arrays[0]


def official_shapes(arch, released=False):
    """{key: shape} of the official layout (pre-Linen names).

    released=True: exactly what `ours_to_official` writes (class row in the pos-embedding,
    GroupNorm (1,1,1,C)); otherwise the canonical form that `canonicalize` produces for `arch`.
    """
    shapes, s = state_shapes(arch), {}
    for ours, names, kind in name_map(arch):
        parts = _to_official(np.empty(shapes[ours], np.uint8), kind, arch.num_heads)
        if kind == "gn" and not released:
            parts = [p.reshape(-1) for p in parts]
        s.update((n, p.shape) for n, p in zip(names, parts))
    if arch.extra.get("big_vision_pos") and not released:
        n_grid = arch.grid[0] * arch.grid[1]
        del s[POS]
        s["pos_embedding"] = (1, n_grid, arch.embed_dim)
    return s


def official_to_ours(params, arch):
    """Our state dict (float32 numpy) from canonical official params."""
    p, d = dict(params), arch.embed_dim
    if "pos_embedding" in p:  # big_vision: no class row; the class token gets no position
        pos = p.pop("pos_embedding")
        if arch.global_pool == "token":
            pos = np.concatenate([np.zeros((1, 1, d), np.float32), pos], axis=1)
        p[POS] = pos
    return {ours: np.ascontiguousarray(_to_ours([p[n] for n in names], kind), dtype=np.float32)
            for ours, names, kind in name_map(arch)}


def ours_to_official(state, arch):
    """The released npz layout from one of our state dicts (float32, pre-Linen names)."""
    out = {}
    for ours, names, kind in name_map(arch):
        a = np.asarray(state[ours], dtype=np.float32)  # PLSC O2 files are fp16
        out.update(zip(names, _to_official(a, kind, arch.num_heads)))
    return {k: np.ascontiguousarray(v) for k, v in out.items()}
