"""timm `vit_*` safetensors <-> plsc state dicts (numpy only: no torch needed).

timm and plsc use the same module names; the differences are
  * torch Linear weights are [out, in], Paddle's [in, out]: attn.qkv/proj, mlp.fc1/fc2, head and
    the pre-logits layer are transposed (qkv rows are ordered q|k|v, each head-major, in both, so
    a transpose is all it takes);
  * timm 0.5/0.6 named the 2020 in21k pre-logits layer `pre_logits.fc` (ours: `head0`);
  * conv weights are OIHW in both: no change.

Pooling: our 'gap' model is the official one (final LayerNorm on every token, then the mean).
In timm that is `class_token=False, global_pool='avg', fc_norm=False` (vit_base_patch16_gap_224):
`norm.*` present, no `fc_norm.*`, pos_embed without a class row. timm's default avg-pool
variant (`fc_norm=True`: mean first, LayerNorm after) computes a different function and is
refused with a clear message.

Numerics: timm runs exact (erf) GELU, so `timm2paddle` writes `act: gelu` by default to
reproduce timm's outputs; pass act='gelu_tanh' for weights that came from the JAX release
and should behave as there.
"""
import numpy as np

from ..errors import ConfigError, DataError
from ..weights import read_state, save_pickle
from .common import (arch_from_state, arch_label, check_layout, dump_model_yaml,
                     model_config, require_file,
                     state_shapes, strip_pdparams, summary, text_writer, write_outputs)

RENAMES = {"head0.weight": "pre_logits.fc.weight", "head0.bias": "pre_logits.fc.bias"}
RENAMES_BACK = {v: k for k, v in RENAMES.items()}


def _is_linear_weight(our_name, ndim):
    """In our layout (vit_spec.state_shapes) every 2-D weight is a Linear's: norms are 1-D,
    convs 4-D, the embeddings 3-D."""
    return our_name.endswith(".weight") and ndim == 2


def timm_name(our_name):
    return RENAMES.get(our_name, our_name)


def timm_to_ours(tensors):
    """Rename/transpose known timm arrays; unknown names pass through for the layout check."""
    out = {}
    for k, v in tensors.items():
        ours = RENAMES_BACK.get(k, k)
        if _is_linear_weight(ours, v.ndim):
            v = v.T
        out[ours] = np.ascontiguousarray(v, dtype=np.float32)
    return out


def ours_to_timm(state):
    out = {}
    for k, v in state.items():
        v = np.asarray(v, dtype=np.float32)
        out[timm_name(k)] = np.ascontiguousarray(v.T if _is_linear_weight(k, v.ndim) else v)
    return out


def timm_shapes(arch):
    return {timm_name(k): (tuple(reversed(s)) if _is_linear_weight(k, len(s)) else s)
            for k, s in state_shapes(arch).items()}


def read_safetensors(path):
    require_file(path)
    from safetensors.numpy import load_file
    try:
        tensors = load_file(path)
    except Exception as e:  # safetensors raises its own error types for every format problem
        raise DataError(f"{path}: not a readable safetensors file ({type(e).__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else ''})") from None
    for k, v in tensors.items():
        if v.dtype.kind != "f":
            raise DataError(f"{path}: tensor '{k}' has dtype {v.dtype}, expected floating point")
    return tensors


def load_timm_as_state(path, num_heads=None):
    """(our state dict, Arch) of a timm ViT safetensors file."""
    raw = read_safetensors(path)
    if "fc_norm.weight" in raw:
        raise ConfigError(f"{path}: timm fc_norm (LayerNorm after average pooling) is not "
                          f"supported; the official gap model normalises before pooling "
                          f"(timm fc_norm=False)")
    if any(k.startswith("patch_embed.backbone.") for k in raw):
        raise ConfigError(f"{path}: timm hybrid (ResNet stem) models are not supported by "
                          f"timm2paddle; convert the official R50+ViT npz with npz2paddle")
    state = timm_to_ours(raw)
    arch = arch_from_state(state, path, num_heads=num_heads, check=False)
    check_layout(raw, timm_shapes(arch), arch_label(arch), path)
    return state, arch


def timm_to_paddle(src, dst_prefix, num_heads=None, act="gelu", log=print):
    """`tools/convert.py timm2paddle`: write DST.pdparams + DST.yaml."""
    state, arch = load_timm_as_state(src, num_heads)
    dst_prefix = strip_pdparams(dst_prefix)
    cfg = model_config(arch, act=act)
    dst = dst_prefix + ".pdparams"
    write_outputs({dst: lambda tmp: save_pickle(state, tmp),
                   dst_prefix + ".yaml": text_writer(dump_model_yaml(cfg))})
    log(summary(arch, state, dst) + f" (from timm, act {act})")
    return {"arch": arch, "model_config": cfg, "state": state}


def paddle_to_timm(src_prefix, dst, log=print):
    """`tools/convert.py paddle2timm`: our/PLSC .pdparams -> timm-named safetensors."""
    path = strip_pdparams(src_prefix) + ".pdparams"
    state = read_state(path)
    # Heads do not change the fused layout: any value passes the check.
    arch = arch_from_state(state, path, num_heads=1)
    if arch.resnet_layers is not None:
        raise ConfigError(f"{path}: hybrid (ResNet stem) models cannot be exported to timm "
                          f"names; use paddle2npz")
    tensors = ours_to_timm(state)
    from safetensors.numpy import save_file
    write_outputs({dst: lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"})})
    pool = "token" if arch.global_pool == "token" else \
        "gap: timm class_token=False, global_pool='avg', fc_norm=False"
    log(f"exported {len(tensors)} tensors ({pool}) -> {dst}")
    return tensors
