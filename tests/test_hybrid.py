"""R50+ViT hybrid: architecture facts, the ResNet stem against the float64 numpy reference
(tests/numpy_vit.py, which reads the official arrays directly), SAME padding, weight
standardisation, and conversion of official-layout hybrid checkpoints."""
import numpy as np
import paddle
import pytest

import numpy_vit as nv
from plsc.convert import npz
from plsc.errors import ConfigError
from plsc.models import build_model
from plsc.models.hybrid import ResNetBackbone, StdConv2d, same_padding
from plsc.registry import MODELS

TINY = dict(resnet=(32, [2, 1, 1]), img=32, patch=1)  # width 32 (GroupNorm needs 32 | width)


def quiet(*_a, **_k):
    pass


def _as_state(p):
    """Our state dict from official arrays, through the converter's documented mapping."""
    params, _ = npz.canonicalize(p, "test")
    arch = npz.infer_arch(params, "test")
    return npz.official_to_ours(params, arch), arch, params


def convert(tmp_path, params, **kw):
    np.savez(tmp_path / "src.npz", **params)
    return npz.npz_to_paddle(str(tmp_path / "src.npz"), str(tmp_path / "m"), log=quiet, **kw)


def test_r50_vit_b16_parameter_count_and_names():
    model = build_model({"name": "ViT_base_r50_s16_224"})
    assert sum(int(np.prod(p.shape)) for p in model.parameters()) == 98_659_112
    sd = model.state_dict()
    assert tuple(sd["patch_embed.proj.weight"].shape) == (768, 1024, 1, 1)
    assert tuple(sd["pos_embed"].shape) == (1, 197, 768)
    assert tuple(sd["patch_embed.backbone.root.conv.weight"].shape) == (64, 3, 7, 7)
    last = sd["patch_embed.backbone.stages.2.units.8.conv3.weight"]
    assert tuple(last.shape) == (1024, 256, 1, 1)
    assert "patch_embed.backbone.stages.2.units.9.conv1.weight" not in sd  # (3, 4, 9) units
    assert "patch_embed.backbone.stages.1.units.1.conv_proj.weight" not in sd  # first unit only
    assert not any(k.endswith("conv1.bias") or k.endswith("conv.bias") for k in sd)  # no conv bias
    # Official init: the unit's last GroupNorm starts at zero (unit = identity + shortcut).
    assert not np.any(sd["patch_embed.backbone.stages.0.units.1.gn3.weight"].numpy())
    assert np.all(sd["patch_embed.backbone.stages.0.units.1.gn2.weight"].numpy() == 1)
    assert model.patch_embed.grid_size == (14, 14) and model.num_prefix_tokens == 1
    p384 = MODELS.parameters("ViT_base_r50_s16_384")
    assert (p384["img_size"].default, p384["patch_size"].default,
            tuple(p384["resnet_layers"].default), p384["resnet_width"].default) == \
        (384, 16, (3, 4, 9), 64)


def test_same_padding_puts_the_extra_pixel_after():
    assert same_padding(224, 7, 2) == (2, 3)  # even: asymmetric
    assert same_padding(225, 7, 2) == (3, 3)
    assert same_padding(112, 3, 2) == (0, 1)
    assert same_padding(113, 3, 2) == (1, 1)
    assert same_padding(56, 3, 1) == (1, 1)
    assert same_padding(56, 1, 2) == (0, 0)


@pytest.mark.parametrize("hw", [(32, 32), (35, 37), (33, 34)])
def test_backbone_matches_numpy_reference_even_and_odd_sizes(hw):
    p = nv.random_official(seed=1, **TINY)
    state, _, _ = _as_state(p)
    backbone = ResNetBackbone(3, 32, (2, 1, 1))
    backbone.eval()
    pre = "patch_embed.backbone."
    from plsc.weights import assign as assign_state
    assign_state(backbone, {k[len(pre):]: v for k, v in state.items() if k.startswith(pre)}, "t")
    x = np.random.default_rng(2).standard_normal((2, 3) + hw)
    with paddle.no_grad():
        got = backbone(paddle.to_tensor(x.astype(np.float32))).numpy()
    ref = nv.resnet_stem({k: v.astype(np.float64) for k, v in p.items()},
                         x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    assert got.shape == ref.shape == (2, 512, -(-hw[0] // 16), -(-hw[1] // 16))
    # float32 through 13 GroupNorms of 1-4 channels per group: relative error ~3e-6
    assert np.abs(got - ref).max() <= 8e-6 * max(1.0, np.abs(ref).max())


def test_weight_standardisation_formula_and_invariance():
    conv = StdConv2d(4, 6, 3, stride=2)
    w = np.random.default_rng(3).standard_normal((6, 4, 3, 3)) * 0.3 + 0.1
    conv.weight.set_value(w.astype(np.float32))
    mean = w.mean(axis=(1, 2, 3), keepdims=True)
    std = w.std(axis=(1, 2, 3), keepdims=True)  # biased
    np.testing.assert_allclose(conv.standardized_weight().numpy(), (w - mean) / (std + 1e-5),
                               atol=1e-5)
    x = np.random.default_rng(4).standard_normal((1, 4, 10, 10)).astype(np.float32)
    x = paddle.to_tensor(x)
    y = conv(x).numpy()
    conv.weight.set_value((w * 3.0 - 2.0).astype(np.float32))  # per-channel affine change
    assert np.abs(conv(x).numpy() - y).max() < 1e-3  # standardisation removes it (up to eps)
    assert y.shape == (1, 6, 5, 5)


@pytest.mark.parametrize("gn_shape", ["flat", "flax_old"])
def test_converted_tiny_hybrid_matches_official_forward(tmp_path, gn_shape):
    p = nv.random_official(seed=5, gn_shape=gn_shape, **TINY)
    res = convert(tmp_path, p)
    assert res["model_config"]["name"] == "ViTHybrid"
    assert res["model_config"]["resnet_layers"] == [2, 1, 1]
    model = build_model(res["model_config"])
    model.eval()
    from plsc.convert.pretrained import load_pretrained
    load_pretrained(model, str(tmp_path / "m"), log=quiet)
    x = np.random.default_rng(6).standard_normal((2, 3, 32, 32)).astype(np.float32)
    with paddle.no_grad():
        got = model(paddle.to_tensor(x)).numpy()
    ref = nv.forward(p, x)
    assert np.abs(got - ref).max() <= 1e-5 * max(1.0, np.abs(ref).max())
    assert np.abs(ref).max() > 0.1


def test_hybrid_check_and_gn_shapes_give_the_same_state(tmp_path, capsys):
    flat = nv.random_official(seed=7, **TINY)
    old = nv.random_official(seed=7, gn_shape="flax_old", **TINY)
    a, _, _ = _as_state(flat)
    b, _, _ = _as_state(old)
    assert set(a) == set(b) and all(np.array_equal(a[k], b[k]) for k in a)
    res = convert(tmp_path, old, check=True)
    assert res["check"] <= 1e-4
    npz.npz_to_paddle(str(tmp_path / "src.npz"), str(tmp_path / "m2"), check=True)
    assert capsys.readouterr().out.startswith("check: max |logits diff| = ")


def test_finetune_hybrid_to_a_larger_resolution(tmp_path):
    from plsc.convert.pretrained import load_pretrained
    res = convert(tmp_path, nv.random_official(seed=8, **TINY))
    model = build_model(dict(res["model_config"], img_size=64, class_num=3))
    report = load_pretrained(model, str(tmp_path / "m"), finetune=True, log=quiet)
    assert report["resized"] == {"pos_embed": ((1, 5, 32), (1, 17, 32))}
    assert report["dropped"] == ["head.weight", "head.bias"]
    np.testing.assert_array_equal(
        model.state_dict()["patch_embed.backbone.stages.2.units.0.conv2.weight"].numpy(),
        res["state"]["patch_embed.backbone.stages.2.units.0.conv2.weight"])


def test_hybrid_argument_errors():
    with pytest.raises(ConfigError) as e:
        build_model({"name": "ViTHybrid", "img_size": 32, "embed_dim": 32, "depth": 1,
                     "num_heads": 2, "resnet_width": 48, "resnet_layers": [1, 1, 1]})
    assert str(e.value) == "resnet_width must be a multiple of 32 (GroupNorm groups), got 48"
    with pytest.raises(ConfigError) as e:
        build_model({"name": "ViTHybrid", "img_size": 32, "patch_size": 8, "embed_dim": 32,
                     "depth": 1, "num_heads": 2, "resnet_width": 32, "resnet_layers": [1, 1, 1]})
    assert str(e.value) == ("ViTHybrid: patch_size 8 must be a multiple of the ResNet stem's "
                            "stride 16 (3 stages)")
    model = build_model({"name": "ViTHybrid", "img_size": 32, "embed_dim": 32, "depth": 1,
                         "num_heads": 2, "resnet_width": 32, "resnet_layers": [1, 1, 1]})
    with pytest.raises(ConfigError, match="input images are 48x48 but the model was built for "
                                          "img_size 32"):
        model(paddle.zeros([1, 3, 48, 48]))
