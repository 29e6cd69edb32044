"""Independent float64 numpy forward of the OFFICIAL (Google JAX) Vision Transformer.

Works directly on the flat npz dict as released ("Transformer/encoderblock_0/...", HWIO kernels,
[hidden, heads, head_dim] attention kernels), so tests can compare a converted Paddle model
against the source checkpoint without trusting any conversion code from `plsc`. Covers:

  * classifier 'token' (cls + pos-embed with a class row) and 'gap' (mean over normed tokens);
  * the optional 2020-style `pre_logits` Dense + tanh;
  * pre-Linen (LayerNorm_0, MultiHeadDotProductAttention_1, LayerNorm_2, MlpBlock_3) and Linen
    (LayerNorm_0, MultiHeadDotProductAttention_0, LayerNorm_1, MlpBlock_0) block names;
  * big_vision files: `params/` or `params/img/` prefix and a top-level `pos_embedding` without a
    class row, added to the patches BEFORE the class token is prepended; `opt/target/` files;
  * the R50 hybrid stem (weight-standardised convs, GroupNorm(32, 1e-6), TF/Flax SAME padding).

Inputs are NCHW (Paddle's layout); the official code runs NHWC, so we transpose once on entry.
Nothing here is fast; everything is float64 and written for readability.
"""
import math

import numpy as np

LN_EPS = 1e-6
GN_EPS = 1e-6
GN_GROUPS = 32
WS_EPS = 1e-5


# ----------------------------------------------------------------------------- primitives
def layer_norm(x, scale, bias, eps=LN_EPS):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)  # biased, as flax.linen.LayerNorm
    return (x - mean) / np.sqrt(var + eps) * scale + bias


def gelu_tanh(x):
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def gelu_erf(x):
    from scipy.special import erf
    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


def softmax(x, axis=-1):
    x = x - x.max(axis=axis, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=axis, keepdims=True)


def same_pads(n, k, s):
    """TF/Flax 'SAME' padding for one spatial dim: (before, after); the extra pixel goes after."""
    out = -(-n // s)
    total = max((out - 1) * s + k - n, 0)
    return total // 2, total - total // 2


def conv2d_nhwc(x, kernel, stride=1, padding="VALID"):
    """x [N,H,W,C], kernel HWIO [kh,kw,C,O]; padding 'VALID' or 'SAME' (Flax semantics)."""
    kh, kw = kernel.shape[:2]
    if padding == "SAME":
        ph = same_pads(x.shape[1], kh, stride)
        pw = same_pads(x.shape[2], kw, stride)
        x = np.pad(x, ((0, 0), ph, pw, (0, 0)))
    win = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(1, 2))  # N,H',W',C,kh,kw
    win = win[:, ::stride, ::stride]
    return np.einsum("nhwcij,ijco->nhwo", win, kernel, optimize=True)


def max_pool_same(x, k=3, s=2):
    ph = same_pads(x.shape[1], k, s)
    pw = same_pads(x.shape[2], k, s)
    x = np.pad(x, ((0, 0), ph, pw, (0, 0)), constant_values=-np.inf)
    win = np.lib.stride_tricks.sliding_window_view(x, (k, k), axis=(1, 2))[:, ::s, ::s]
    return win.max(axis=(-2, -1))


def standardize(kernel):
    """Weight standardisation over (H, W, I) per output channel: (w - mean) / (std + 1e-5)."""
    mean = kernel.mean(axis=(0, 1, 2), keepdims=True)
    std = kernel.std(axis=(0, 1, 2), keepdims=True)  # biased (ddof=0), like jnp.std
    return (kernel - mean) / (std + WS_EPS)


def group_norm(x, scale, bias, groups=GN_GROUPS, eps=GN_EPS):
    n, h, w, c = x.shape
    g = x.reshape(n, h, w, groups, c // groups)
    mean = g.mean(axis=(1, 2, 4), keepdims=True)
    var = ((g - mean) ** 2).mean(axis=(1, 2, 4), keepdims=True)
    g = (g - mean) / np.sqrt(var + eps)
    return g.reshape(n, h, w, c) * scale.reshape(-1) + bias.reshape(-1)


def relu(x):
    return np.maximum(x, 0.0)


# ----------------------------------------------------------------------------- checkpoint access
def _strip_prefix(params):
    for prefix in ("params/img/", "params/", "opt/target/", ""):
        if prefix + "embedding/kernel" in params:
            return {k[len(prefix):]: v for k, v in params.items() if k.startswith(prefix)}
    raise KeyError("no embedding/kernel in the checkpoint")


def _as_f64(a):
    a = np.asarray(a)
    if a.dtype.kind == "V" and a.dtype.itemsize == 2:  # bfloat16 stored as raw 2-byte records
        a = (a.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
    return a.astype(np.float64)


class _Block:
    """Name lookup for one encoder block, pre-Linen or Linen."""

    def __init__(self, p, i):
        self.p, self.pre = p, f"Transformer/encoderblock_{i}/"
        linen = self.pre + "MlpBlock_0/Dense_0/kernel" in p
        self.attn = "MultiHeadDotProductAttention_0" if linen else "MultiHeadDotProductAttention_1"
        self.ln2 = "LayerNorm_1" if linen else "LayerNorm_2"
        self.mlp = "MlpBlock_0" if linen else "MlpBlock_3"

    def __call__(self, *parts):
        return self.p[self.pre + "/".join(parts)]


# ----------------------------------------------------------------------------- model pieces
def resnet_stem(p, x):
    """The R50 hybrid backbone on NHWC input: root conv/GN/ReLU/max-pool + stages block1..blockS."""
    x = conv2d_nhwc(x, standardize(p["conv_root/kernel"]), stride=2, padding="SAME")
    x = relu(group_norm(x, p["gn_root/scale"], p["gn_root/bias"]))
    x = max_pool_same(x, 3, 2)
    s = 1
    while f"block{s}/unit1/conv1/kernel" in p:
        u = 1
        while f"block{s}/unit{u}/conv1/kernel" in p:
            pre = f"block{s}/unit{u}/"
            stride = 2 if (s > 1 and u == 1) else 1  # stride on conv2 of each later stage's unit 1

            def conv_gn(y, name, gn, st=1):
                y = conv2d_nhwc(y, standardize(p[pre + name + "/kernel"]), st, "SAME")
                return group_norm(y, p[pre + gn + "/scale"], p[pre + gn + "/bias"])

            residual = x
            if pre + "conv_proj/kernel" in p:
                residual = conv_gn(x, "conv_proj", "gn_proj", stride)
            y = relu(conv_gn(x, "conv1", "gn1"))
            y = relu(conv_gn(y, "conv2", "gn2", stride))
            y = conv_gn(y, "conv3", "gn3")
            x = relu(residual + y)
            u += 1
        s += 1
    return x


def encoder_block(b, x, gelu):
    n, t, d = x.shape
    y = layer_norm(x, b("LayerNorm_0", "scale"), b("LayerNorm_0", "bias"))
    q = np.einsum("btd,dhk->bthk", y, b(b.attn, "query", "kernel")) + b(b.attn, "query", "bias")
    k = np.einsum("btd,dhk->bthk", y, b(b.attn, "key", "kernel")) + b(b.attn, "key", "bias")
    v = np.einsum("btd,dhk->bthk", y, b(b.attn, "value", "kernel")) + b(b.attn, "value", "bias")
    q = q / math.sqrt(q.shape[-1])
    probs = softmax(np.einsum("bqhk,bshk->bhqs", q, k), axis=-1)
    o = np.einsum("bhqs,bshk->bqhk", probs, v)
    o = np.einsum("bqhk,hkd->bqd", o, b(b.attn, "out", "kernel")) + b(b.attn, "out", "bias")
    x = x + o
    y = layer_norm(x, b(b.ln2, "scale"), b(b.ln2, "bias"))
    y = y @ b(b.mlp, "Dense_0", "kernel") + b(b.mlp, "Dense_0", "bias")
    y = gelu(y)
    y = y @ b(b.mlp, "Dense_1", "kernel") + b(b.mlp, "Dense_1", "bias")
    return x + y


def forward(params, images, gelu="tanh", return_all=False):
    """Logits of the official model for NCHW `images`.

    return_all=True returns a dict: tokens (final normed sequence), pooled (after pooling and
    pre_logits if present, i.e. the head's input) and logits.
    """
    p = {k: _as_f64(v) for k, v in _strip_prefix(params).items()}
    act = gelu_tanh if gelu == "tanh" else gelu_erf
    x = np.asarray(images, np.float64).transpose(0, 2, 3, 1)  # NCHW -> NHWC
    if "conv_root/kernel" in p:
        x = resnet_stem(p, x)
    kernel = p["embedding/kernel"]
    x = conv2d_nhwc(x, kernel, stride=kernel.shape[0], padding="VALID") + p["embedding/bias"]
    n, h, w, d = x.shape
    x = x.reshape(n, h * w, d)
    if "pos_embedding" in p:  # big_vision: grid-only pos-embedding added before the class token
        x = x + p["pos_embedding"]
    if "cls" in p:
        x = np.concatenate([np.broadcast_to(p["cls"], (n, 1, d)), x], axis=1)
    if "Transformer/posembed_input/pos_embedding" in p:
        x = x + p["Transformer/posembed_input/pos_embedding"]
    i = 0
    while f"Transformer/encoderblock_{i}/LayerNorm_0/scale" in p:
        x = encoder_block(_Block(p, i), x, act)
        i += 1
    tokens = layer_norm(x, p["Transformer/encoder_norm/scale"], p["Transformer/encoder_norm/bias"])
    pooled = tokens[:, 0] if "cls" in p else tokens.mean(axis=1)
    if "pre_logits/kernel" in p:
        pooled = np.tanh(pooled @ p["pre_logits/kernel"] + p["pre_logits/bias"])
    logits = pooled @ p["head/kernel"] + p["head/bias"]
    if return_all:
        return {"tokens": tokens, "pooled": pooled, "logits": logits}
    return logits


# ----------------------------------------------------------------------------- random checkpoints
def random_official(hidden=32, depth=2, heads=2, mlp=64, patch=4, img=16, in_chans=3,
                    classes=10, classifier="token", pre_logits=None, resnet=None, seed=0,
                    gn_shape="flat", scale=0.2):
    """A random checkpoint in the RELEASED layout (pre-Linen names, float32, no prefix).

    resnet=(width, [units per stage]) adds the hybrid stem; `patch` is then the embedding kernel
    on the stem's output map and `img` the input resolution. gn_shape='flax_old' stores GroupNorm
    params as (1,1,1,C) like the released R50 file.
    """
    rng = np.random.default_rng(seed)

    def r(*shape, s=scale):
        return (rng.standard_normal(shape) * s).astype(np.float32)

    p = {}
    feat, stride = in_chans, 1
    if resnet is not None:
        width, layers = resnet

        def gn(name, c):
            shape = (1, 1, 1, c) if gn_shape == "flax_old" else (c,)
            p[name + "/scale"] = (1.0 + r(c)).reshape(shape)
            p[name + "/bias"] = r(c).reshape(shape)

        p["conv_root/kernel"] = r(7, 7, in_chans, width)
        gn("gn_root", width)
        cin = width
        for s, units in enumerate(layers, 1):
            w = width * 2 ** (s - 1)
            for u in range(1, units + 1):
                pre = f"block{s}/unit{u}/"
                if u == 1:
                    p[pre + "conv_proj/kernel"] = r(1, 1, cin, 4 * w)
                    gn(pre + "gn_proj", 4 * w)
                p[pre + "conv1/kernel"] = r(1, 1, cin, w)
                gn(pre + "gn1", w)
                p[pre + "conv2/kernel"] = r(3, 3, w, w)
                gn(pre + "gn2", w)
                p[pre + "conv3/kernel"] = r(1, 1, w, 4 * w)
                gn(pre + "gn3", 4 * w)
                cin = 4 * w
        feat, stride = cin, 4 * 2 ** (len(layers) - 1)
    p["embedding/kernel"] = r(patch, patch, feat, hidden)
    p["embedding/bias"] = r(hidden)
    grid = img // stride // patch
    n_tok = grid * grid
    if classifier == "token":
        p["cls"] = r(1, 1, hidden)
        n_tok += 1
    p["Transformer/posembed_input/pos_embedding"] = r(1, n_tok, hidden)
    dh = hidden // heads
    for i in range(depth):
        pre = f"Transformer/encoderblock_{i}/"
        p[pre + "LayerNorm_0/scale"] = 1.0 + r(hidden)
        p[pre + "LayerNorm_0/bias"] = r(hidden)
        for name in ("query", "key", "value"):
            p[pre + f"MultiHeadDotProductAttention_1/{name}/kernel"] = r(hidden, heads, dh)
            p[pre + f"MultiHeadDotProductAttention_1/{name}/bias"] = r(heads, dh)
        p[pre + "MultiHeadDotProductAttention_1/out/kernel"] = r(heads, dh, hidden)
        p[pre + "MultiHeadDotProductAttention_1/out/bias"] = r(hidden)
        p[pre + "LayerNorm_2/scale"] = 1.0 + r(hidden)
        p[pre + "LayerNorm_2/bias"] = r(hidden)
        p[pre + "MlpBlock_3/Dense_0/kernel"] = r(hidden, mlp)
        p[pre + "MlpBlock_3/Dense_0/bias"] = r(mlp)
        p[pre + "MlpBlock_3/Dense_1/kernel"] = r(mlp, hidden)
        p[pre + "MlpBlock_3/Dense_1/bias"] = r(hidden)
    p["Transformer/encoder_norm/scale"] = 1.0 + r(hidden)
    p["Transformer/encoder_norm/bias"] = r(hidden)
    head_in = hidden
    if pre_logits:
        p["pre_logits/kernel"] = r(hidden, pre_logits)
        p["pre_logits/bias"] = r(pre_logits)
        head_in = pre_logits
    p["head/kernel"] = r(head_in, classes)
    p["head/bias"] = r(classes)
    return p


def to_linen(params):
    """Rename pre-Linen block modules to today's Flax Linen names (LayerNorm_0 stays norm1)."""
    ren = {"MultiHeadDotProductAttention_1": "MultiHeadDotProductAttention_0",
           "LayerNorm_2": "LayerNorm_1", "MlpBlock_3": "MlpBlock_0"}
    out = {}
    for k, v in params.items():
        parts = k.split("/")
        if len(parts) > 2 and parts[1].startswith("encoderblock_"):
            parts[2] = ren.get(parts[2], parts[2])
        out["/".join(parts)] = v
    return out


def to_big_vision(params, prefix="params/", bf16=False):
    """big_vision layout: Linen names, a prefix, grid-only top-level `pos_embedding`.

    The class row of the released pos-embedding is folded into `cls` (cls + pos[0]) so both
    files compute the same function. bf16=True stores every array as raw 2-byte void records
    (values rounded to bfloat16 by truncation), like np.savez of ml_dtypes.bfloat16 arrays.
    """
    p = dict(to_linen(params))
    pos = p.pop("Transformer/posembed_input/pos_embedding")
    if "cls" in p:
        p["cls"] = p["cls"] + pos[:, :1]
        pos = pos[:, 1:]
    p["pos_embedding"] = pos
    if bf16:
        p = {k: (np.ascontiguousarray(v, np.float32).view(np.uint32) >> 16).astype(np.uint16)
             .view("V2") for k, v in p.items()}
    return {prefix + k: v for k, v in p.items()}


def bf16_round(params):
    """float32 values exactly as a bf16 (truncated) file would decode them."""
    return {k: ((np.ascontiguousarray(v, np.float32).view(np.uint32) >> 16) << 16)
            .astype(np.uint32).view(np.float32) for k, v in params.items()}
