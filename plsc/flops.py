"""Parameter and FLOP counts of the registered models, computed analytically (no weights built).

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

# Architecture keys a spec needs (VisionTransformer's keywords that change the size).
VIT_KEYS = ("img_size", "patch_size", "in_chans", "class_num", "embed_dim", "depth", "num_heads",
            "mlp_ratio", "qkv_bias", "representation_size", "global_pool")


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
    if spec["img_size"] % _token_stride(spec):
        raise ConfigError(f"model '{name}': img_size {spec['img_size']} is not divisible by "
                          f"patch_size {spec['patch_size']}")
    return spec


def _hybrid(spec):
    return spec.get("resnet_layers") is not None


def _token_stride(spec):
    """Pixels per token side: patch_size (for hybrids too: stem stride x embedding kernel)."""
    return int(spec["patch_size"])


def _grid(spec):
    g = int(spec["img_size"]) // _token_stride(spec)
    return g, g


def _resnet_stride(spec):
    return 4 * 2 ** (len(spec["resnet_layers"]) - 1)


def _resnet_stages(spec):
    """[(units, width, stride)] of the hybrid stem (plsc/models/hybrid.py)."""
    width = int(spec.get("resnet_width", 64))
    return [(int(u), width * 2 ** i, 1 if i == 0 else 2)
            for i, u in enumerate(spec["resnet_layers"])]


def _resnet(spec):
    """(params, macs) of the ResNet stem: weight-standardised convs without bias, GroupNorm
    (scale + bias) after each; 'SAME' padding, so every stride-s layer maps n -> ceil(n / s)."""
    cin, width = int(spec["in_chans"]), int(spec.get("resnet_width", 64))
    params = cin * width * 49 + 2 * width
    size = math.ceil(int(spec["img_size"]) / 2)  # 7x7 stride-2 root conv
    macs = size * size * cin * width * 49
    size = math.ceil(size / 2)  # 3x3 stride-2 max-pool
    cin = width
    for units, w, stride in _resnet_stages(spec):
        for u in range(units):
            s = stride if u == 0 else 1
            out_size = math.ceil(size / s)
            params += cin * w + 2 * w + w * w * 9 + 2 * w + w * 4 * w + 2 * 4 * w
            macs += size * size * cin * w  # conv1 (1x1) at the input resolution
            macs += out_size * out_size * (w * w * 9 + w * 4 * w)  # conv2 (3x3, stride), conv3
            if cin != 4 * w or s != 1:  # projection shortcut
                params += cin * 4 * w + 2 * 4 * w
                macs += out_size * out_size * cin * 4 * w
            cin, size = 4 * w, out_size
    return params, macs


def _dims(spec):
    d = int(spec["embed_dim"])
    heads = int(spec["num_heads"])
    hidden = int(d * float(spec["mlp_ratio"]))  # same rounding as the model's Mlp
    gh, gw = _grid(spec)
    prefix = 1 if spec["global_pool"] == "token" else 0
    return d, heads, hidden, gh * gw, prefix


def _embed(spec):
    """(in_channels, kernel) of the patch-embedding conv."""
    if _hybrid(spec):
        return 4 * int(spec.get("resnet_width", 64)) * 2 ** (len(spec["resnet_layers"]) - 1), \
            _token_stride(spec) // _resnet_stride(spec)
    return int(spec["in_chans"]), _token_stride(spec)


def count_params(spec):
    """Number of parameters of the model `spec` describes."""
    d, _, hidden, patches, prefix = _dims(spec)
    cin, k = _embed(spec)
    n = cin * k * k * d + d  # patch-embedding conv weight + bias
    if _hybrid(spec):
        n += _resnet(spec)[0]
    n += prefix * d + (patches + prefix) * d  # class token, position embedding
    qkv_bias = 3 * d if spec["qkv_bias"] else 0
    block = (2 * d  # norm1
             + d * 3 * d + qkv_bias + d * d + d  # qkv, proj
             + 2 * d  # norm2
             + d * hidden + hidden + hidden * d + d)  # fc1, fc2
    n += int(spec["depth"]) * block + 2 * d  # blocks, final norm
    features = d
    if spec["representation_size"]:
        r = int(spec["representation_size"])
        n += d * r + r
        features = r
    if int(spec["class_num"]) > 0:
        n += features * int(spec["class_num"]) + int(spec["class_num"])
    return n


def count_macs(spec):
    """(total, {part: MACs}) for one image; see the module docstring for what is counted."""
    d, heads, hidden, patches, prefix = _dims(spec)
    tokens = patches + prefix
    depth = int(spec["depth"])
    cin, k = _embed(spec)
    parts = {}
    if _hybrid(spec):
        parts["resnet_stem"] = _resnet(spec)[1]
    parts["patch_embed"] = patches * cin * k * k * d
    parts["qkv"] = depth * tokens * d * 3 * d
    # Per head: [N, Dh] x [Dh, N] and [N, N] x [N, Dh]; summed over heads Dh * heads = D.
    parts["attn_qk"] = depth * tokens * tokens * d
    parts["attn_av"] = depth * tokens * tokens * d
    parts["attn_proj"] = depth * tokens * d * d
    parts["mlp"] = depth * 2 * tokens * d * hidden
    features = d
    if spec["representation_size"]:
        features = int(spec["representation_size"])
        parts["pre_logits"] = d * features
    parts["head"] = features * max(int(spec["class_num"]), 0)
    return sum(parts.values()), parts


def model_info(model_cfg, img_size=None):
    """{'name', 'img_size', 'params', 'macs', 'gmacs', 'parts'} of a Model config (or name)."""
    spec = model_spec(model_cfg, img_size)
    macs, parts = count_macs(spec)
    return {"name": spec["name"], "img_size": int(spec["img_size"]), "params": count_params(spec),
            "macs": macs, "gmacs": macs / 1e9, "parts": parts, "spec": spec}
