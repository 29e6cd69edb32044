"""Parameter and FLOP counts of the registered models, computed analytically (no weights built)
from the architecture spec (plsc/vit_spec.py): parameters are the sizes of the spec's state dict.

Why analytic: `tools/model_info.py --all` lists ViT-H/14 (632M parameters) next to the small
models; building every model just to count would take minutes and gigabytes. The formulas are
checked against built models in tests/test_model_info.py.

FLOPs are reported as multiply-accumulates (MACs, "GMACs"), the convention of the ViT
literature (ViT-B/16 at 224 px: 17.6 G). Counted, per image:
  * the patch-embedding conv (and, for R50+ViT hybrids, every convolution of the ResNet stem);
  * per block: the qkv projection, attention scores Q K^T, the attention-weighted sum A V, the
    output projection, and both MLP matmuls;
  * the pre-logits layer (when present) and the classifier head (on the pooled feature only).
Not counted (each < 1% for the official sizes): bias adds, LayerNorm/GroupNorm, softmax, GELU,
residual and position-embedding adds, weight standardisation, pooling, dropout.

Public API:
    model_spec(model_cfg, img_size=None) -> dict   the architecture of a Model config
    count_params(spec) -> int
    count_macs(spec) -> (total, {part: macs})
    model_info(model_cfg, img_size=None) -> dict    name, img_size, params, macs, gmacs, parts
    named_models() -> [name]                        registered factories (what --all lists)
"""
import inspect
import math

from .errors import ConfigError
from .vit_spec import ARCH_KEYS, ViTSpec, spec_from_kwargs
from .vit_spec import count_params as _spec_params

# Architecture keys a spec needs (the plain ViT's; the stem keys are optional).
VIT_KEYS = tuple(k for k in ARCH_KEYS if not k.startswith("resnet_"))


def _registry():
    from .registry import MODELS, import_components

    import_components()
    return MODELS


def named_models():
    """Every registered model built by a factory function (the generic VisionTransformer class
    takes its size from the config and is left out)."""
    models = _registry()
    return [n for n in models.names() if not inspect.isclass(models.get(n))]


def model_spec(model_cfg, img_size=None):
    """{key: value} of the architecture a `Model:` section builds: the factory's defaults
    (from its signature) updated with the section's keys, and `img_size` if given."""
    if isinstance(model_cfg, str):
        model_cfg = {"name": model_cfg}
    models = _registry()
    name = model_cfg.get("name")
    params = models.parameters(name)  # ConfigError with "did you mean" for unknown names
    if params is None:
        raise ConfigError(f"model '{name}' takes **kwargs; cannot read its architecture")
    spec = {k: p.default for k, p in params.items() if p.default is not inspect.Parameter.empty}
    spec.update({k: v for k, v in model_cfg.items() if k != "name"})
    if img_size is not None:
        spec["img_size"] = int(img_size)
    missing = [k for k in VIT_KEYS if k not in spec]
    if missing:
        raise ConfigError(f"model '{name}': cannot count its size, no value for "
                          f"{', '.join(missing)}")
    spec["name"] = name
    if spec["img_size"] % spec["patch_size"]:
        raise ConfigError(f"model '{name}': img_size {spec['img_size']} is not divisible by "
                          f"patch_size {spec['patch_size']}")
    return spec


def _as_spec(spec):
    return spec if isinstance(spec, ViTSpec) else spec_from_kwargs(spec)


def count_params(spec):
    """Number of parameters of the model `spec` (a model_spec dict or a ViTSpec) describes."""
    return _spec_params(_as_spec(spec))


def _resnet_macs(spec):
    """MACs of the hybrid stem: 'SAME' padding, so every stride-s layer maps n -> ceil(n / s)."""
    cin, width = spec.in_chans, spec.resnet_width
    size = math.ceil(spec.img_size / 2)  # 7x7 stride-2 root conv
    macs = size * size * cin * width * 49
    size = math.ceil(size / 2)  # 3x3 stride-2 max-pool
    cin = width
    for units, w, stride in spec.stages():
        for u in range(units):
            s = stride if u == 0 else 1
            out_size = math.ceil(size / s)
            macs += size * size * cin * w  # conv1 (1x1) at the input resolution
            macs += out_size * out_size * (w * w * 9 + w * 4 * w)  # conv2 (3x3, stride), conv3
            if u == 0:  # projection shortcut
                macs += out_size * out_size * cin * 4 * w
            cin, size = 4 * w, out_size
    return macs


def count_macs(spec):
    """(total, {part: MACs}) for one image; see the module docstring for what is counted."""
    spec = _as_spec(spec)
    d, hidden, depth, tokens = spec.embed_dim, spec.mlp_dim, spec.depth, spec.num_tokens
    patches, k = spec.grid[0] * spec.grid[1], spec.embed_kernel
    parts = {}
    if spec.resnet_layers is not None:
        parts["resnet_stem"] = _resnet_macs(spec)
    parts["patch_embed"] = patches * spec.embed_in_chans * k * k * d
    parts["qkv"] = depth * tokens * d * 3 * d
    # Per head: [N, Dh] x [Dh, N] and [N, N] x [N, Dh]; summed over heads Dh * heads = D.
    parts["attn_qk"] = depth * tokens * tokens * d
    parts["attn_av"] = depth * tokens * tokens * d
    parts["attn_proj"] = depth * tokens * d * d
    parts["mlp"] = depth * 2 * tokens * d * hidden
    if spec.representation_size:
        parts["pre_logits"] = d * spec.representation_size
    parts["head"] = spec.num_features * max(spec.class_num, 0)
    return sum(parts.values()), parts


def model_info(model_cfg, img_size=None):
    """{'name', 'img_size', 'params', 'macs', 'gmacs', 'parts'} of a Model config (or name)."""
    spec = model_spec(model_cfg, img_size)
    macs, parts = count_macs(spec)
    return {"name": spec["name"], "img_size": int(spec["img_size"]), "params": count_params(spec),
            "macs": macs, "gmacs": macs / 1e9, "parts": parts, "spec": spec}
