"""ViT model family: shapes, parameter counts, numerics against an independent float64 numpy
forward, initialisation statistics, regularisers, recompute and error messages."""
import inspect
import math

import numpy as np
import paddle
import pytest
from scipy.special import erf

from plsc.errors import ConfigError
from plsc.models import VisionTransformer, build_model
from plsc.models.layers import drop_path
from plsc.registry import MODELS

SMALL = dict(img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=4, class_num=7)


def small_vit(**overrides):
    return VisionTransformer(**{**SMALL, **overrides})


def randomize(model, seed=0):
    """Random values for every parameter (the real init has a zero head, which would make any
    logits comparison trivial). Returns the numpy float64 state dict."""
    rng = np.random.default_rng(seed)
    state = {}
    for name, value in model.state_dict().items():
        shape = value.shape
        if name.endswith("weight") and ("norm" in name):
            arr = 1.0 + 0.1 * rng.standard_normal(shape)
        elif name.endswith("bias") or name in ("cls_token", "pos_embed"):
            arr = 0.1 * rng.standard_normal(shape)
        else:
            fan_in = int(np.prod(shape[1:])) if len(shape) == 4 else shape[0]
            arr = rng.standard_normal(shape) / math.sqrt(fan_in)
        state[name] = arr
    model.set_state_dict({k: paddle.to_tensor(v.astype("float32")) for k, v in state.items()})
    # Compare against the float32-rounded values the model actually holds.
    return {k: v.astype("float32").astype("float64") for k, v in state.items()}


# ---------------------------------------------------------------- independent numpy reference

def np_layer_norm(x, w, b, eps=1e-6):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)  # biased variance
    return (x - mu) / np.sqrt(var + eps) * w + b


def np_gelu(x, form):
    if form == "gelu":
        return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def np_vit(sd, x, *, patch, heads, depth, global_pool="token", act="gelu",
           representation=False):
    """float64 ViT forward from a state dict; returns (logits, final tokens, attention probs)."""
    x = x.astype("float64")
    B, C, H, W = x.shape
    gh, gw = H // patch, W // patch
    # patchify conv == matmul over flattened (C, ph, pw) patches, grid row-major
    patches = x.reshape(B, C, gh, patch, gw, patch).transpose(0, 2, 4, 1, 3, 5)
    patches = patches.reshape(B, gh * gw, C * patch * patch)
    kernel = sd["patch_embed.proj.weight"]  # [D, C, p, p]
    D = kernel.shape[0]
    t = patches @ kernel.reshape(D, -1).T + sd["patch_embed.proj.bias"]
    if global_pool == "token":
        t = np.concatenate([np.broadcast_to(sd["cls_token"], (B, 1, D)), t], axis=1)
    t = t + sd["pos_embed"]
    N, Dh = t.shape[1], D // heads
    probs_all = []
    for i in range(depth):
        p = f"blocks.{i}."
        h = np_layer_norm(t, sd[p + "norm1.weight"], sd[p + "norm1.bias"])
        qkv = (h @ sd[p + "attn.qkv.weight"] + sd[p + "attn.qkv.bias"]).reshape(B, N, 3, heads, Dh)
        q, k, v = (qkv[:, :, j].transpose(0, 2, 1, 3) for j in range(3))  # [B, H, N, Dh]
        s = q @ k.transpose(0, 1, 3, 2) / math.sqrt(Dh)
        s = np.exp(s - s.max(-1, keepdims=True))
        a = s / s.sum(-1, keepdims=True)
        probs_all.append(a)
        o = (a @ v).transpose(0, 2, 1, 3).reshape(B, N, D)
        t = t + o @ sd[p + "attn.proj.weight"] + sd[p + "attn.proj.bias"]
        h = np_layer_norm(t, sd[p + "norm2.weight"], sd[p + "norm2.bias"])
        h = np_gelu(h @ sd[p + "mlp.fc1.weight"] + sd[p + "mlp.fc1.bias"], act)
        t = t + h @ sd[p + "mlp.fc2.weight"] + sd[p + "mlp.fc2.bias"]
    t = np_layer_norm(t, sd["norm.weight"], sd["norm.bias"])
    pooled = t[:, 0] if global_pool == "token" else t.mean(1)
    if representation:
        pooled = np.tanh(pooled @ sd["head0.weight"] + sd["head0.bias"])
    return pooled @ sd["head.weight"] + sd["head.bias"], t, probs_all


def images(batch=2, size=16, seed=1):
    return paddle.to_tensor(np.random.default_rng(seed).standard_normal((batch, 3, size, size)),
                            dtype="float32")


# ---------------------------------------------------------------- numerics

@pytest.mark.parametrize("act", ["gelu", "gelu_tanh"])
@pytest.mark.parametrize("global_pool,representation_size", [
    ("token", None), ("gap", None), ("token", 24)])
def test_forward_matches_numpy_reference(global_pool, representation_size, act):
    model = small_vit(global_pool=global_pool, representation_size=representation_size, act=act,
                      attn_impl="math")
    model.eval()
    sd = randomize(model)
    x = images()
    ref_logits, ref_tokens, _ = np_vit(sd, x.numpy(), patch=4, heads=4, depth=2,
                                       global_pool=global_pool, act=act,
                                       representation=representation_size is not None)
    with paddle.no_grad():
        tokens = model.forward_features(x)
        logits = model(x)
    assert tokens.shape == [2, 16 + model.num_prefix_tokens, 32]
    # Bounds ~3x the measured float32 noise (tokens 1.1e-6, logits 5.7e-7): a final LayerNorm
    # with Paddle's default epsilon 1e-5 instead of 1e-6 moves the tokens by ~8e-6.
    assert np.abs(tokens.numpy() - ref_tokens).max() <= 3e-6
    assert np.abs(logits.numpy() - ref_logits).max() <= 1.5e-6
    # forward_head on the features gives the same logits without recomputing the encoder
    np.testing.assert_array_equal(model.forward_head(tokens).numpy(), logits.numpy())


def test_gelu_forms_differ():
    """The two act settings are really different functions (guards against a no-op switch)."""
    a = small_vit(act="gelu")
    b = small_vit(act="gelu_tanh")
    a.eval(), b.eval()
    randomize(a)
    b.set_state_dict(a.state_dict())
    x = images()
    diff = np.abs(a(x).numpy() - b(x).numpy()).max()
    assert 1e-7 < diff < 1e-2


def test_sdpa_matches_math_forward_and_grads():
    math_model = small_vit(attn_impl="math")
    sdpa_model = small_vit(attn_impl="sdpa")
    assert (math_model.attn_impl, sdpa_model.attn_impl) == ("math", "sdpa")
    randomize(math_model)
    sdpa_model.set_state_dict(math_model.state_dict())
    x = images(batch=3)
    outs = []
    for m in (math_model, sdpa_model):
        m.train()  # no dropout configured: train mode only enables grads through the same ops
        y = m(x)
        (y * paddle.arange(7, dtype="float32")).sum().backward()
        grads = {n: p.grad.numpy() for n, p in m.named_parameters()}
        outs.append((y.numpy(), grads))
    assert np.abs(outs[0][0] - outs[1][0]).max() <= 1e-5
    for name, g in outs[0][1].items():  # float32 sums of magnitude ~50: relative tolerance
        assert np.abs(g - outs[1][1][name]).max() <= 1e-5 * max(1.0, np.abs(g).max()), name


def test_return_attn():
    model = small_vit(attn_impl="sdpa")  # return_attn must fall back to the math path
    model.eval()
    sd = randomize(model)
    x = images()
    tokens, attns = model.forward_features(x, return_attn=True)
    _, _, ref_probs = np_vit(sd, x.numpy(), patch=4, heads=4, depth=2)
    assert len(attns) == 2
    for probs, ref in zip(attns, ref_probs):
        assert probs.shape == [2, 4, 17, 17]
        np.testing.assert_allclose(probs.numpy().sum(-1), 1.0, atol=1e-5)
        assert np.abs(probs.numpy() - ref).max() <= 8e-7
    plain = model.forward_features(x)
    assert np.abs(tokens.numpy() - plain.numpy()).max() <= 1e-5

    math_model = small_vit(attn_impl="math")
    math_model.eval()
    math_model.set_state_dict(model.state_dict())
    tokens_m, _ = math_model.forward_features(x, return_attn=True)
    np.testing.assert_array_equal(tokens_m.numpy(), math_model.forward_features(x).numpy())


# ---------------------------------------------------------------- regularisers

def test_dropouts_inactive_in_eval_and_active_in_train():
    drop = small_vit(drop_rate=0.5, attn_drop_rate=0.5, drop_path_rate=0.5)
    clean = small_vit()
    randomize(drop)
    clean.set_state_dict(drop.state_dict())
    drop.eval(), clean.eval()
    x = images()
    a, b, ref = drop(x).numpy(), drop(x).numpy(), clean(x).numpy()
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, ref)

    drop.train()
    paddle.seed(3)
    t1 = drop(x).numpy()
    t2 = drop(x).numpy()
    assert np.abs(t1 - ref).max() > 1e-3 and np.abs(t1 - t2).max() > 1e-3


@pytest.mark.parametrize("kwargs", [dict(drop_rate=0.5), dict(attn_drop_rate=0.5),
                                    dict(attn_drop_rate=0.5, attn_impl="sdpa"),
                                    dict(drop_path_rate=0.5)])
def test_each_regulariser_is_active_in_train(kwargs):
    model = small_vit(**kwargs)
    randomize(model)
    x = images()
    model.eval()
    ref = model(x).numpy()
    model.train()
    paddle.seed(5)
    assert np.abs(model(x).numpy() - ref).max() > 1e-4


def test_drop_path_schedule_and_per_sample_masks():
    model = VisionTransformer(img_size=8, patch_size=4, embed_dim=8, depth=5, num_heads=2,
                              drop_path_rate=0.4)
    rates = [getattr(b.drop_path, "rate", 0.0) for b in model.blocks]
    np.testing.assert_allclose(rates, [0.0, 0.1, 0.2, 0.3, 0.4], atol=1e-12)
    assert isinstance(model.blocks[0].drop_path, paddle.nn.Identity)

    paddle.seed(0)
    x = paddle.ones([4000, 3, 5])
    y = drop_path(x, 0.25, training=True).numpy()
    per_sample = y.reshape(4000, -1)
    # every sample is either dropped entirely or kept and scaled by 1 / keep
    assert set(np.unique(per_sample.min(1))) <= {0.0, np.float32(1 / 0.75)}
    np.testing.assert_array_equal(per_sample.min(1), per_sample.max(1))
    assert abs((per_sample[:, 0] == 0).mean() - 0.25) < 0.03
    np.testing.assert_array_equal(drop_path(x, 0.25, training=False).numpy(), x.numpy())


def test_grad_checkpointing_uses_recompute_and_keeps_grads(monkeypatch):
    import paddle.distributed.fleet.utils as fleet_utils

    calls = []
    real = fleet_utils.recompute

    def counting(fn, *args, **kwargs):
        calls.append(fn)
        return real(fn, *args, **kwargs)

    monkeypatch.setattr(fleet_utils, "recompute", counting)
    x = images()
    grads = []
    for checkpointing in (False, True):
        paddle.seed(0)
        model = small_vit()
        randomize(model)
        model.grad_checkpointing = checkpointing
        model.train()
        model(x).sum().backward()
        grads.append({n: p.grad.numpy() for n, p in model.named_parameters()})
    assert len(calls) == 2  # one per block, only when enabled
    for name, g in grads[0].items():
        np.testing.assert_allclose(grads[1][name], g, rtol=1e-6, atol=1e-7, err_msg=name)

    model.eval()
    calls.clear()
    model(x)
    assert calls == []  # no recompute outside training


# ---------------------------------------------------------------- structure, counts, factories

def test_state_dict_names_and_shapes():
    model = small_vit(representation_size=24)
    sd = model.state_dict()
    expected = {"cls_token": [1, 1, 32], "pos_embed": [1, 17, 32],
                "patch_embed.proj.weight": [32, 3, 4, 4], "patch_embed.proj.bias": [32],
                "norm.weight": [32], "norm.bias": [32], "head0.weight": [32, 24],
                "head0.bias": [24], "head.weight": [24, 7], "head.bias": [7]}
    for i in range(2):
        p = f"blocks.{i}."
        expected.update({p + "norm1.weight": [32], p + "norm1.bias": [32],
                         p + "attn.qkv.weight": [32, 96], p + "attn.qkv.bias": [96],
                         p + "attn.proj.weight": [32, 32], p + "attn.proj.bias": [32],
                         p + "norm2.weight": [32], p + "norm2.bias": [32],
                         p + "mlp.fc1.weight": [32, 128], p + "mlp.fc1.bias": [128],
                         p + "mlp.fc2.weight": [128, 32], p + "mlp.fc2.bias": [32]})
    assert {k: list(v.shape) for k, v in sd.items()} == expected

    gap = small_vit(global_pool="gap")
    assert "cls_token" not in gap.state_dict() and "head0.weight" not in gap.state_dict()
    assert gap.pos_embed.shape == [1, 16, 32]
    assert (gap.num_prefix_tokens, model.num_prefix_tokens) == (0, 1)
    assert model.patch_embed.grid_size == (4, 4)
    assert (model.embed_dim, model.class_num, model.img_size) == (32, 7, 16)
    assert model.grad_checkpointing is False


def test_parameter_count_base16():
    model = build_model({"name": "ViT_base_patch16_224"})
    assert sum(int(np.prod(p.shape)) for p in model.parameters()) == 86_567_656


def test_parameter_count_huge14():
    # LazyGuard: shapes only, no 2.4 GiB of weights (full construction is measured separately).
    with paddle.LazyGuard():
        model = build_model({"name": "ViT_huge_patch14_224"})
    assert sum(int(np.prod(p.shape)) for p in model.parameters()) == 632_045_800


# name -> (img_size, patch, embed_dim, heads, depth)
OFFICIAL = {
    "ViT_tiny_patch16_224": (224, 16, 192, 3, 12), "ViT_tiny_patch16_384": (384, 16, 192, 3, 12),
    "ViT_small_patch16_224": (224, 16, 384, 6, 12), "ViT_small_patch16_384": (384, 16, 384, 6, 12),
    "ViT_small_patch32_224": (224, 32, 384, 6, 12), "ViT_small_patch32_384": (384, 32, 384, 6, 12),
    "ViT_base_patch8_224": (224, 8, 768, 12, 12),
    "ViT_base_patch16_224": (224, 16, 768, 12, 12), "ViT_base_patch16_384": (384, 16, 768, 12, 12),
    "ViT_base_patch32_224": (224, 32, 768, 12, 12), "ViT_base_patch32_384": (384, 32, 768, 12, 12),
    "ViT_large_patch16_224": (224, 16, 1024, 16, 24),
    "ViT_large_patch16_384": (384, 16, 1024, 16, 24),
    "ViT_large_patch32_224": (224, 32, 1024, 16, 24),
    "ViT_large_patch32_384": (384, 32, 1024, 16, 24),
    "ViT_huge_patch14_224": (224, 14, 1280, 16, 32),
    # 384 is not a multiple of 14: PLSC's 27 x 27 grid, i.e. 378 px input
    "ViT_huge_patch14_384": (378, 14, 1280, 16, 32),
    "ViT_tiny_patch4_32": (32, 4, 96, 3, 4),
    # DeiT's table (Touvron et al. 2021): Ti/S/B = 192/384/768 wide, 3/6/12 heads, 12 blocks
    "DeiT_tiny_patch16_224": (224, 16, 192, 3, 12), "DeiT_small_patch16_224": (224, 16, 384, 6, 12),
    "DeiT_base_patch16_224": (224, 16, 768, 12, 12), "DeiT_base_patch16_384": (384, 16, 768, 12, 12),
}


@pytest.mark.parametrize("name,count", [("DeiT_tiny_patch16_224", 5_717_416),
                                        ("DeiT_small_patch16_224", 22_050_664),
                                        ("DeiT_base_patch16_224", 86_567_656)])
def test_deit_parameter_counts_match_the_published_models(name, count):
    # the DeiT release's (and timm's deit_*_patch16_224) parameter counts, 1000 classes
    with paddle.LazyGuard():
        model = build_model({"name": name})
    assert sum(int(np.prod(p.shape)) for p in model.parameters()) == count


def test_every_official_factory_is_registered():
    assert set(OFFICIAL) <= set(MODELS.names())


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_factory_dims(name):
    img, patch, dim, heads, depth = OFFICIAL[name]
    with paddle.LazyGuard():
        model = build_model({"name": name})
    assert (model.img_size, model.patch_embed.patch_size, model.embed_dim) == \
        (img, (patch, patch), dim)
    assert len(model.blocks) == depth
    assert model.blocks[0].attn.num_heads == heads
    assert list(model.blocks[0].mlp.fc1.weight.shape) == [dim, 4 * dim]
    assert list(model.pos_embed.shape) == [1, (img // patch) ** 2 + 1, dim]
    assert model.class_num == 1000 and model.head0 is None
    # the signature exposes every VisionTransformer keyword with the preset as default
    params = MODELS.parameters(name)
    vit_params = MODELS.parameters("VisionTransformer")
    assert list(params) == list(vit_params)
    assert (params["img_size"].default, params["patch_size"].default,
            params["embed_dim"].default, params["num_heads"].default,
            params["depth"].default) == (img, patch, dim, heads, depth)
    assert params["class_num"].annotation == vit_params["class_num"].annotation


def test_factory_overrides_and_config_keys():
    model = build_model({"name": "ViT_tiny_patch4_32", "class_num": 10, "drop_rate": 0.1,
                         "representation_size": 16, "head_bias": -10, "depth": 2})
    assert model.class_num == 10 and len(model.blocks) == 2
    assert list(model.head.weight.shape) == [16, 10]
    np.testing.assert_array_equal(model.head.bias.numpy(), np.full(10, -10.0, "float32"))
    with pytest.raises(ConfigError, match="did you mean 'Model.class_num'"):
        build_model({"name": "ViT_tiny_patch4_32", "clas_num": 10})
    assert inspect.signature(VisionTransformer).parameters["representation_size"].default is None


def test_attn_impl_auto_resolves_per_device():
    model = VisionTransformer(img_size=8, patch_size=4, embed_dim=8, depth=1, num_heads=2)
    expected = "sdpa" if paddle.device.get_device().startswith("gpu") else "math"
    assert model.attn_impl == expected == model.blocks[0].attn.attn_impl


def test_class_num_zero_returns_pooled_features():
    model = small_vit(class_num=0, representation_size=24)
    model.eval()
    randomize(model)
    assert model(images()).shape == [2, 24]


# ---------------------------------------------------------------- initialisation

def test_initialisation_statistics():
    D = 192
    model = VisionTransformer(img_size=64, patch_size=8, embed_dim=D, depth=2, num_heads=3,
                              class_num=50, representation_size=96, head_bias=-10.0)
    sd = {k: v.numpy().astype("float64") for k, v in model.state_dict().items()}
    np.testing.assert_array_equal(sd["head.weight"], 0.0)
    np.testing.assert_array_equal(sd["head.bias"], -10.0)
    np.testing.assert_array_equal(sd["cls_token"], 0.0)
    assert abs(sd["pos_embed"].std() - 0.02) < 0.001 and abs(sd["pos_embed"].mean()) < 0.001

    def check_uniform(w, limit):
        assert np.abs(w).max() <= limit and np.abs(w).max() > 0.99 * limit
        assert abs(w.std() - limit / math.sqrt(3)) < 0.03 * limit

    for i in range(2):
        p = f"blocks.{i}."
        # qkv: three separate D x D xavier matrices -> limit sqrt(6 / 2D), not sqrt(6 / 4D)
        check_uniform(sd[p + "attn.qkv.weight"], math.sqrt(3.0 / D))
        check_uniform(sd[p + "attn.proj.weight"], math.sqrt(6.0 / (2 * D)))
        check_uniform(sd[p + "mlp.fc1.weight"], math.sqrt(6.0 / (5 * D)))
        check_uniform(sd[p + "mlp.fc2.weight"], math.sqrt(6.0 / (5 * D)))
        for b in ("mlp.fc1.bias", "mlp.fc2.bias"):
            assert 0.8e-6 < sd[p + b].std() < 1.2e-6
        for b in ("attn.qkv.bias", "attn.proj.bias", "norm1.bias", "norm2.bias"):
            np.testing.assert_array_equal(sd[p + b], 0.0)
        np.testing.assert_array_equal(sd[p + "norm1.weight"], 1.0)
    check_uniform(sd["head0.weight"], math.sqrt(6.0 / (D + 96)))
    np.testing.assert_array_equal(sd["head0.bias"], 0.0)
    # LeCun normal (truncated at 2 std, variance 1 / fan_in)
    conv, fan_in = sd["patch_embed.proj.weight"], 3 * 8 * 8
    assert abs(conv.std() - math.sqrt(1.0 / fan_in)) < 0.03 * math.sqrt(1.0 / fan_in)
    assert np.abs(conv).max() <= 2 * math.sqrt(1.0 / fan_in) / 0.87962566 * (1 + 1e-6)
    np.testing.assert_array_equal(sd["patch_embed.proj.bias"], 0.0)


def test_init_follows_paddle_seed():
    paddle.seed(11)
    a = small_vit().state_dict()
    paddle.seed(11)
    b = small_vit().state_dict()
    for k in a:
        np.testing.assert_array_equal(a[k].numpy(), b[k].numpy())


# ---------------------------------------------------------------- errors and export

@pytest.mark.parametrize("kwargs,message", [
    (dict(global_pool="avg"), "Model.global_pool: expected one of token, gap, got str 'avg'"),
    (dict(act="relu"), "Model.act: expected one of gelu, gelu_tanh, got str 'relu'"),
    (dict(attn_impl="flash"), "Model.attn_impl: expected one of auto, math, sdpa, got str 'flash'"),
    (dict(embed_dim=30), "Model: embed_dim 30 is not divisible by num_heads 4"),
    (dict(img_size=18), "Model: img_size 18 is not divisible by patch_size 4"),
    (dict(depth=0), "Model.depth: expected int >= 1, got int 0"),
    (dict(drop_rate=1.0), "Model.drop_rate: expected float in [0, 1), got float 1.0"),
])
def test_bad_arguments_raise_config_error(kwargs, message):
    # the rules live in the schema (annotated signature + check_vit), applied by build_model
    with pytest.raises(ConfigError) as info:
        build_model({"name": "VisionTransformer", **SMALL, **kwargs})
    assert str(info.value) == message


@pytest.mark.parametrize("key,value,message", [
    ("class_num", -1,
     "Model.class_num: expected int >= 0, got int -1 (from -o Model.class_num=-1)"),
    ("num_heads", 5,
     "Model: embed_dim 96 is not divisible by num_heads 5 (from -o Model.num_heads=5)"),
])
def test_variant_keys_are_checked_by_get_config(tmp_path, key, value, message):
    """A named variant's keys are schema-checked at config load, before any build."""
    from plsc.config import get_config
    src = "configs/quickstart/ViT_tiny_patch4_32_shapes_1n2c_dp_fp32.yaml"
    with pytest.raises(ConfigError) as info:
        get_config(src, [f"Model.{key}={value}"])
    assert str(info.value) == message


def test_wrong_input_size_is_a_config_error():
    model = small_vit()
    with pytest.raises(ConfigError) as info:
        model(images(size=32))
    assert str(info.value) == ("input images are 32x32 but the model was built for img_size 16; "
                               "set Model.img_size or the transforms' size to match")


def test_to_static_with_dynamic_batch():
    model = small_vit(depth=1)
    model.eval()
    randomize(model)
    x = images(batch=3)
    ref = model(x).numpy()
    static = paddle.jit.to_static(
        model, input_spec=[paddle.static.InputSpec([None, 3, 16, 16], "float32")],
        full_graph=True)
    np.testing.assert_allclose(static(x).numpy(), ref, atol=1e-6)


def test_paddle_seed_decides_the_initial_weights_and_xavier_bounds_hold():
    def weights(seed):
        paddle.seed(seed)
        m = build_model({"name": "VisionTransformer", "img_size": 16, "patch_size": 4,
                         "embed_dim": 32, "depth": 1, "num_heads": 2, "class_num": 3})
        return {k: v.numpy() for k, v in m.state_dict().items()}

    a, b, c = weights(1), weights(1), weights(2)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["blocks.0.mlp.fc1.weight"], c["blocks.0.mlp.fc1.weight"])
    fc1 = a["blocks.0.mlp.fc1.weight"]  # [32, 128]: xavier limit sqrt(6 / 160)
    limit = np.sqrt(6.0 / (32 + 128))
    assert np.abs(fc1).max() <= limit and np.abs(fc1).max() > 0.9 * limit
    assert abs(fc1.std() - limit / np.sqrt(3)) < 0.1 * limit / np.sqrt(3)
    assert not np.array_equal(a["blocks.0.attn.qkv.weight"][:, :32], a["blocks.0.attn.proj.weight"])
