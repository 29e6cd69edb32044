"""`convert --check`: the official model's forward in float64 numpy, run from the SOURCE arrays.

It reads the canonical official names (`npz.canonicalize` output: pre-Linen names, no prefix,
float32), so a mistake in the name/shape mapping of `npz.official_to_ours` shows up as a large
difference instead of being reproduced on both sides. Weights are promoted to float64 one
layer at a time so ViT-H fits in memory. Kept independent of `tests/numpy_vit.py` on purpose
(the tests must not trust code shipped in plsc, and plsc cannot import tests).
"""
import math

import numpy as np

from ..errors import DataError


def _f64(params, key):
    return params[key].astype(np.float64)


def _ln(x, params, pre, eps=1e-6):
    mu = x.mean(-1, keepdims=True)
    var = np.square(x - mu).mean(-1, keepdims=True)
    scale, bias = _f64(params, pre + "/scale"), _f64(params, pre + "/bias")
    return (x - mu) / np.sqrt(var + eps) * scale + bias


def _same(n, k, s):
    total = max((-(-n // s) - 1) * s + k - n, 0)
    return total // 2, total - total // 2


def _conv(x, kernel, stride, same):
    """NHWC x HWIO convolution through strided windows (im2col by view)."""
    kh, kw = kernel.shape[:2]
    if same:
        x = np.pad(x, ((0, 0), _same(x.shape[1], kh, stride), _same(x.shape[2], kw, stride),
                       (0, 0)))
    cols = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(1, 2))[:, ::stride, ::stride]
    return np.einsum("nhwcij,ijco->nhwo", cols, kernel, optimize=True)


def _std_conv(x, params, key, stride):
    w = _f64(params, key)
    w = (w - w.mean(axis=(0, 1, 2))) / (w.std(axis=(0, 1, 2)) + 1e-5)
    return _conv(x, w, stride, same=True)


def _gn(x, params, pre, groups=32, eps=1e-6):
    n, h, w, c = x.shape
    g = x.reshape(n, h * w, groups, c // groups)
    mu = g.mean(axis=(1, 3), keepdims=True)
    var = np.square(g - mu).mean(axis=(1, 3), keepdims=True)
    g = ((g - mu) / np.sqrt(var + eps)).reshape(n, h, w, c)
    return g * _f64(params, pre + "/scale").reshape(-1) + _f64(params, pre + "/bias").reshape(-1)


def _stem(x, params, layers):
    x = np.maximum(_gn(_std_conv(x, params, "conv_root/kernel", 2), params, "gn_root"), 0)
    x = np.pad(x, ((0, 0), _same(x.shape[1], 3, 2), _same(x.shape[2], 3, 2), (0, 0)),
               constant_values=-np.inf)
    x = np.lib.stride_tricks.sliding_window_view(x, (3, 3), axis=(1, 2))[:, ::2, ::2].max((-2, -1))
    for s, units in enumerate(layers, 1):
        for u in range(1, units + 1):
            pre, stride = f"block{s}/unit{u}/", (2 if s > 1 and u == 1 else 1)
            if u == 1:
                res = _gn(_std_conv(x, params, pre + "conv_proj/kernel", stride), params,
                          pre + "gn_proj")
            else:
                res = x
            y = np.maximum(_gn(_std_conv(x, params, pre + "conv1/kernel", 1), params,
                               pre + "gn1"), 0)
            y = np.maximum(_gn(_std_conv(y, params, pre + "conv2/kernel", stride), params,
                               pre + "gn2"), 0)
            y = _gn(_std_conv(y, params, pre + "conv3/kernel", 1), params, pre + "gn3")
            x = np.maximum(res + y, 0)
    return x


def official_forward(params, arch, images):
    """{'tokens', 'features', 'logits'} (float64) of the official model on NCHW `images`.

    'features' is the head's input: pooled tokens, after pre_logits (Dense + tanh) if present.
    """
    x = np.asarray(images, np.float64).transpose(0, 2, 3, 1)
    if arch.resnet_layers is not None:
        x = _stem(x, params, arch.resnet_layers)
    k = params["embedding/kernel"].shape[0]
    x = _conv(x, _f64(params, "embedding/kernel"), k, same=False) + _f64(params, "embedding/bias")
    n, d = x.shape[0], x.shape[-1]
    x = x.reshape(n, -1, d)
    if "pos_embedding" in params:  # big_vision: position added before the class token
        x = x + _f64(params, "pos_embedding")
    if "cls" in params:
        x = np.concatenate([np.repeat(_f64(params, "cls"), n, axis=0), x], axis=1)
    if "Transformer/posembed_input/pos_embedding" in params:
        x = x + _f64(params, "Transformer/posembed_input/pos_embedding")
    for i in range(arch.depth):
        b = f"Transformer/encoderblock_{i}/"
        a = b + "MultiHeadDotProductAttention_1/"
        y = _ln(x, params, b + "LayerNorm_0")
        q, kk, v = (np.einsum("ntd,dhe->nhte", y, _f64(params, a + m + "/kernel"), optimize=True)
                    + _f64(params, a + m + "/bias")[None, :, None, :]
                    for m in ("query", "key", "value"))
        att = np.einsum("nhqe,nhke->nhqk", q, kk, optimize=True) / math.sqrt(q.shape[-1])
        att = np.exp(att - att.max(-1, keepdims=True))
        att /= att.sum(-1, keepdims=True)
        o = np.einsum("nhqk,nhke->nhqe", att, v, optimize=True)
        x = x + np.einsum("nhqe,hed->nqd", o, _f64(params, a + "out/kernel"), optimize=True) \
            + _f64(params, a + "out/bias")
        y = _ln(x, params, b + "LayerNorm_2")
        mlp = b + "MlpBlock_3/"
        y = y @ _f64(params, mlp + "Dense_0/kernel") + _f64(params, mlp + "Dense_0/bias")
        y = 0.5 * y * (1 + np.tanh(math.sqrt(2 / math.pi) * (y + 0.044715 * y ** 3)))
        x = x + y @ _f64(params, mlp + "Dense_1/kernel") + _f64(params, mlp + "Dense_1/bias")
    tokens = _ln(x, params, "Transformer/encoder_norm")
    feats = tokens[:, 0] if arch.global_pool == "token" else tokens.mean(1)
    if arch.representation_size:
        feats = np.tanh(feats @ _f64(params, "pre_logits/kernel") + _f64(params, "pre_logits/bias"))
    logits = feats @ _f64(params, "head/kernel") + _f64(params, "head/bias")
    return {"tokens": tokens, "features": feats, "logits": logits}


def check_conversion(params, state, model_cfg, arch, log=print, seed=0, batch=2, rel_tol=1e-4):
    """Build the model from `model_cfg`, load `state`, compare with `official_forward`.

    Compares logits, or - when the head is all zero (raw in21k files), where logits would be
    trivially equal - the final normed tokens and the head's input features. Raises DataError
    when the difference exceeds rel_tol * max(1, max |reference|). Returns the measured diff.
    """
    import paddle

    from ..models import build_model
    from ..weights import assign

    model = build_model(dict(model_cfg))
    model.eval()
    assign(model, state, "converted state")
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, arch.in_chans, arch.img_size, arch.img_size)).astype(np.float32)
    ref = official_forward(params, arch, x)
    with paddle.no_grad():
        tokens = model.forward_features(paddle.to_tensor(x))
        logits = model.forward_head(tokens).numpy().astype(np.float64)
        # The head's input as the model computes it (pooling, then pre-logits if any).
        pooled = model.forward_head(tokens, pre_logits=True).numpy().astype(np.float64)
        tokens = tokens.numpy().astype(np.float64)
    head_zero = not np.any(params["head/kernel"]) and not np.any(params["head/bias"])
    if head_zero:
        diff = max(np.abs(tokens - ref["tokens"]).max(), np.abs(pooled - ref["features"]).max())
        scale = max(np.abs(ref["tokens"]).max(), np.abs(ref["features"]).max())
        what = "final tokens / pre-logits features" if arch.representation_size else \
            "final tokens / pooled features"
        log(f"check: max |{what} diff| = {diff:.1e} (head is all zero, so logits would match "
            f"trivially; batch {batch} at {arch.img_size}px, seed {seed})")
    else:
        diff = float(np.abs(logits - ref["logits"]).max())
        scale = float(np.abs(ref["logits"]).max())
        what = "logits"
        log(f"check: max |logits diff| = {diff:.1e} (batch {batch} at {arch.img_size}px, "
            f"seed {seed}, float64 numpy reference)")
    if not diff <= rel_tol * max(1.0, scale):
        raise DataError(f"check failed: max |{what} diff| = {diff:.1e} exceeds "
                        f"{rel_tol:g} x max(1, {scale:.2g}); nothing written")
    return float(diff)
