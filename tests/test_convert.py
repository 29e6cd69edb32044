"""Checkpoint conversion (official npz, timm safetensors, PLSC pdparams) and pretrained loading.

References are independent of plsc: tests/numpy_vit.py runs the official architecture in float64
straight from the official arrays; timm-named dicts and the bicubic reference are built here.
Checkpoints are tiny random ones in the released layout (hidden 32, 2 layers, 2 heads, patch 4).
Logit bounds are 2-3x the float32 noise measured for each comparison (~0.3-1.7e-6), so a
numerics change such as a wrong LayerNorm epsilon (~1e-6 to 4e-6 on these logits) fails.
"""
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import yaml

import numpy_vit as nv
from plsc.convert import common, npz
from plsc.convert.common import Arch, state_shapes
from plsc.errors import ConfigError, DataError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(ROOT, "tools", "convert.py")
TINY_NAME = "ViT(d=32, depth=2, heads=2, mlp=64, patch=4)"  # no factory for the test size
TINY = TINY_NAME + " 16px"


def quiet(*_a, **_k):
    pass


def save_npz(path, params):
    np.savez(path, **params)
    return str(path)


def images(n=2, size=16, seed=3):
    return np.random.default_rng(seed).standard_normal((n, 3, size, size)).astype(np.float32)


def run_tool(*args):
    return subprocess.run([sys.executable, TOOL, *map(str, args)], capture_output=True,
                          text=True, cwd=ROOT, timeout=120)


def cli(*args):
    """The CLI in-process (same code path as tools/convert.py, without a paddle import per
    call); returns the exit code."""
    from plsc.cli.convert import main
    try:
        main([str(a) for a in args])
    except SystemExit as e:
        return e.code
    return 0


def last_line(text):
    """The error line; paddle's import may print a ccache warning before it."""
    return text.strip().splitlines()[-1]


def paddle_model(prefix):
    """Build from the written YAML and load the written .pdparams (strictly)."""
    import paddle  # noqa: F401
    from plsc.convert.pretrained import load_pretrained
    from plsc.models import build_model
    with open(f"{prefix}.yaml") as f:
        cfg = yaml.safe_load(f)["Model"]
    model = build_model(cfg)
    model.eval()
    load_pretrained(model, str(prefix), log=quiet)
    return model


def logits_of(model, x):
    import paddle
    with paddle.no_grad():
        return model(paddle.to_tensor(x)).numpy().astype(np.float64)


# ----------------------------------------------------------------------------- architecture facts
def shapes_only(shapes):
    """Arrays with the right shapes and no memory (for architecture inference of big models)."""
    return {k: np.broadcast_to(np.float32(0), s) for k, s in shapes.items()}


RELEASED = [  # (size, hidden, mlp, heads, depth, patch)
    ("tiny", 192, 768, 3, 12, 16), ("small", 384, 1536, 6, 12, 16),
    ("small", 384, 1536, 6, 12, 32), ("base", 768, 3072, 12, 12, 8),
    ("base", 768, 3072, 12, 12, 16), ("base", 768, 3072, 12, 12, 32),
    ("large", 1024, 4096, 16, 24, 16), ("large", 1024, 4096, 16, 24, 32),
    ("huge", 1280, 5120, 16, 32, 14),
]


@pytest.mark.parametrize("size,hidden,mlp,heads,depth,patch", RELEASED)
@pytest.mark.parametrize("img", [224, 384])
def test_every_released_size_is_inferred_from_shapes(size, hidden, mlp, heads, depth, patch, img):
    arch = Arch(embed_dim=hidden, depth=depth, num_heads=heads, mlp_dim=mlp, patch_size=patch,
                in_chans=3, grid=(img // patch, img // patch), class_num=21843,
                representation_size=hidden)
    params = shapes_only(npz.official_shapes(arch))
    got = npz.infer_arch(params, "x.npz")
    px = img // patch * patch  # H/14 "384" is really 27 x 14 = 378 px
    assert (got.embed_dim, got.depth, got.num_heads, got.mlp_dim, got.patch_size, got.img_size,
            got.class_num, got.representation_size, got.global_pool) == \
        (hidden, depth, heads, mlp, patch, px, 21843, hidden, "token")
    cfg = common.model_config(got)
    if (patch, img) == (8, 384):  # B/8 was only released at 224: no factory
        assert cfg["name"] == "VisionTransformer" and cfg["img_size"] == 384
    else:
        assert cfg == {"name": f"ViT_{size}_patch{patch}_{img}", "class_num": 21843,
                       "representation_size": hidden, "act": "gelu_tanh", "epsilon": 1e-6}


def test_parameter_counts_of_the_layouts():
    b16 = Arch(768, 12, 12, 3072, 16, 3, (14, 14), 1000)
    h14 = Arch(1280, 32, 16, 5120, 14, 3, (16, 16), 1000)
    r50 = Arch(768, 12, 12, 3072, 16, 3, (14, 14), 1000, resnet_layers=(3, 4, 9))
    for arch, n in ((b16, 86_567_656), (h14, 632_045_800), (r50, 98_659_112)):
        assert sum(int(np.prod(s)) for s in state_shapes(arch).values()) == n
        assert sum(int(np.prod(s)) for s in npz.official_shapes(arch, released=True).values()) == n


def test_summary_line_and_model_config_for_vit_b16():
    arch = Arch(768, 12, 12, 3072, 16, 3, (14, 14), 1000)
    state = shapes_only(state_shapes(arch))
    assert common.summary(arch, state, "DST.pdparams") == (
        "converted ViT_base_patch16_224: 86,567,656 params, 1000 classes, 224px, "
        "token pooling -> DST.pdparams")
    assert common.model_config(arch) == {"name": "ViT_base_patch16_224", "class_num": 1000,
                                         "act": "gelu_tanh", "epsilon": 1e-6}
    r50 = Arch(768, 12, 12, 3072, 16, 3, (24, 24), 1000, resnet_layers=(3, 4, 9))
    assert common.model_config(r50)["name"] == "ViT_base_r50_s16_384"
    gap = Arch(384, 12, 6, 1536, 16, 3, (14, 14), 10, global_pool="gap")
    assert common.model_config(gap) == {"name": "ViT_small_patch16_224", "class_num": 10,
                                        "global_pool": "gap", "act": "gelu_tanh",
                                        "epsilon": 1e-6}


# ----------------------------------------------------------------------------- npz -> paddle
VARIANTS = {
    "token": dict(),
    "gap": dict(classifier="gap"),
    "pre_logits": dict(pre_logits=16),
    "gap_pre_logits": dict(classifier="gap", pre_logits=24),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_npz2paddle_logits_match_official_numpy_forward(tmp_path, variant):
    p = nv.random_official(**VARIANTS[variant], seed=1)
    result = npz.npz_to_paddle(save_npz(tmp_path / "src.npz", p), str(tmp_path / "dst"), log=quiet)
    assert result["model_config"]["act"] == "gelu_tanh"
    x = images()
    ref = nv.forward(p, x)
    got = logits_of(paddle_model(tmp_path / "dst"), x)
    assert np.abs(got - ref).max() <= 3.5e-6, np.abs(got - ref).max()
    assert np.abs(ref).max() > 0.1  # a meaningful comparison


@pytest.mark.parametrize("layout", ["linen", "big_vision", "big_vision_img_bf16", "scanned",
                                    "opt_target"])
def test_other_layouts_compute_the_same_function(tmp_path, layout):
    p = nv.random_official(seed=2, pre_logits=16)
    if layout == "linen":
        src = nv.to_linen(p)
    elif layout == "big_vision":
        src = nv.to_big_vision(p, "params/")
    elif layout == "big_vision_img_bf16":
        src = nv.to_big_vision(p, "params/img/", bf16=True)
        src["params/txt/Encoder_0/kernel"] = np.zeros((3, 3), np.float32)  # other tower: ignored
    elif layout == "scanned":  # big_vision scan: one stacked array per block parameter
        src = nv.to_big_vision(p, "params/")
        unscanned = dict(src)
        for key in [k for k in src if "encoderblock_0/" in k]:
            rest = key.split("encoderblock_0/")[1]
            src[f"params/Transformer/encoderblock/{rest}"] = np.stack(
                [src.pop(f"params/Transformer/encoderblock_{i}/{rest}") for i in range(2)])
    else:
        src = {"opt/target/" + k: v for k, v in p.items()}
        src["opt/state/step"] = np.zeros((), np.float32)
    npz.npz_to_paddle(save_npz(tmp_path / "src.npz", src), str(tmp_path / "dst"), log=quiet)
    x = images()
    got = logits_of(paddle_model(tmp_path / "dst"), x)
    ref = nv.forward(unscanned if layout == "scanned" else src, x)  # reads each layout itself
    assert np.abs(got - ref).max() <= 1.5e-6
    if layout == "big_vision":  # the folded layout is the same function as the released file
        assert np.abs(ref - nv.forward(p, x)).max() < 2e-7


def test_bf16_void_arrays_decode_exactly(tmp_path):
    p = nv.random_official(seed=4)
    src = nv.to_big_vision(p, "params/", bf16=True)
    assert all(v.dtype == np.dtype("V2") for v in src.values())
    state, arch, params = npz.load_npz_as_state(save_npz(tmp_path / "s.npz", src))
    expect = nv.bf16_round(p)
    np.testing.assert_array_equal(state["blocks.1.mlp.fc2.weight"],
                                  expect["Transformer/encoderblock_1/MlpBlock_3/Dense_1/kernel"])
    assert "bfloat16" in arch.extra["notes"]


def test_in21k_file_with_zero_head_and_check_uses_tokens(tmp_path, capsys):
    p = nv.random_official(seed=5, pre_logits=32, classes=21843)
    p["head/kernel"][:] = 0
    p["head/bias"][:] = 0
    npz.npz_to_paddle(save_npz(tmp_path / "in21k.npz", p), str(tmp_path / "dst"), check=True)
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("check: max |final tokens / pre-logits features diff| = ")
    assert "head is all zero" in out[0]
    assert float(out[0].split("= ")[1].split()[0]) <= 3e-6
    assert out[1].startswith(f"converted {TINY_NAME}: ")
    assert "21843 classes, 16px, token pooling, pre-logits 32 -> " in out[1]


def test_cli_npz2paddle_check_prints_logits_diff(tmp_path):
    p = nv.random_official(seed=6)
    src = save_npz(tmp_path / "s.npz", p)
    r = run_tool("npz2paddle", src, tmp_path / "vit", "--check")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("check: max |logits diff| = ")
    assert float(lines[0].split("= ")[1].split()[0]) <= 2e-6
    assert lines[1] == (f"converted {TINY_NAME}: 19,626 params, 10 classes, 16px, token pooling -> "
                        f"{tmp_path / 'vit.pdparams'}")
    assert sorted(os.listdir(tmp_path)) == ["s.npz", "vit.pdparams", "vit.yaml"]


def test_check_fails_loudly_and_writes_nothing_when_mapping_is_wrong(tmp_path, monkeypatch):
    p = nv.random_official(seed=7)
    real = npz.official_to_ours

    def swapped(params, arch):  # a plausible mapping bug: block 0's two LayerNorms swapped
        s = real(params, arch)
        a, b = "blocks.0.norm1.bias", "blocks.0.norm2.bias"
        s[a], s[b] = s[b], s[a]
        return s

    monkeypatch.setattr(npz, "official_to_ours", swapped)
    with pytest.raises(DataError,
                       match=r"^check failed: max \|logits diff\| = .* nothing written$"):
        npz.npz_to_paddle(save_npz(tmp_path / "s.npz", p), str(tmp_path / "d"), check=True,
                          log=quiet)
    assert os.listdir(tmp_path) == ["s.npz"]


# ----------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("kw", [dict(), dict(classifier="gap"), dict(pre_logits=16),
                                dict(resnet=(32, [2, 1, 1]), img=32, patch=1, gn_shape="flax_old")],
                         ids=["token", "gap", "pre_logits", "hybrid"])
def test_npz_paddle_npz_roundtrip_is_bitwise(tmp_path, kw):
    p = nv.random_official(seed=8, **kw)
    src = save_npz(tmp_path / "a.npz", p)
    assert cli("npz2paddle", src, tmp_path / "m") == 0
    assert cli("paddle2npz", tmp_path / "m", tmp_path / "b.npz") == 0
    with np.load(src) as a, np.load(tmp_path / "b.npz") as b:
        assert set(a.files) == set(b.files)
        for k in a.files:
            assert a[k].dtype == b[k].dtype == np.float32 and a[k].shape == b[k].shape, k
            assert a[k].tobytes() == b[k].tobytes(), k
    with zipfile.ZipFile(tmp_path / "b.npz") as z:  # plain np.savez: stored, not deflated
        assert all(i.compress_type == zipfile.ZIP_STORED for i in z.infolist())


def test_export_writes_released_layout_from_linen_big_vision_import(tmp_path):
    p = nv.random_official(seed=9)
    src = nv.to_big_vision(p, "params/")
    npz.npz_to_paddle(save_npz(tmp_path / "bv.npz", src), str(tmp_path / "m"), log=quiet)
    out = npz.paddle_to_npz(str(tmp_path / "m"), str(tmp_path / "rel.npz"), log=quiet)
    assert set(out) == set(p)  # pre-Linen names, no prefix, pos-embedding with a class row
    # the class row is zero and cls carries the folded position; same function as the source
    assert not np.any(out["Transformer/posembed_input/pos_embedding"][:, 0])
    x = images()
    assert np.abs(nv.forward(out, x) - nv.forward(p, x)).max() < 4e-7


def test_paddle2npz_needs_heads_for_nonstandard_width_without_yaml(tmp_path, capsys):
    p = nv.random_official(seed=10)
    npz.npz_to_paddle(save_npz(tmp_path / "a.npz", p), str(tmp_path / "m"), log=quiet)
    os.rename(tmp_path / "m.yaml", tmp_path / "model.yaml")
    assert cli("paddle2npz", tmp_path / "m", tmp_path / "b.npz") == 2
    assert capsys.readouterr().err == (
        f"error: {tmp_path / 'm.pdparams'}: cannot tell the number of heads for width 32 "
        f"(q, k and v are fused); pass --model-config with Model.num_heads\n")
    assert not os.path.exists(tmp_path / "b.npz")
    assert cli("paddle2npz", tmp_path / "m", tmp_path / "b.npz", "--model-config",
               tmp_path / "model.yaml") == 0
    with np.load(tmp_path / "b.npz") as b:
        assert all(b[k].tobytes() == p[k].tobytes() for k in p)


def test_paddle2npz_warns_when_the_model_numerics_are_not_official(tmp_path):
    p = nv.random_official(seed=18)
    npz.npz_to_paddle(save_npz(tmp_path / "a.npz", p), str(tmp_path / "m"), log=quiet)
    (tmp_path / "erf.yaml").write_text(yaml.safe_dump({"Model": {
        "name": "VisionTransformer", "embed_dim": 32, "num_heads": 2, "act": "gelu"}}))
    logs = []
    npz.paddle_to_npz(str(tmp_path / "m.pdparams"), str(tmp_path / "b.npz"),
                      model_config_path=str(tmp_path / "erf.yaml"), log=logs.append)
    assert logs[0] == ("warning: the model uses act=gelu; the official code runs "
                       "gelu_tanh and epsilon 1e-6, so its outputs will differ slightly")
    assert logs[1] == (f"exported {TINY}: 40 arrays, 19,626 params -> {tmp_path / 'b.npz'}")


# ----------------------------------------------------------------------------- bad input
def _bad_inputs(tmp_path):
    p = nv.random_official(seed=11)
    cases = {}
    cases["missing"] = (str(tmp_path / "nope.npz"),
                        f"checkpoint not found: {tmp_path / 'nope.npz'}")
    (tmp_path / "text.npz").write_text("hello")
    cases["not_zip"] = (str(tmp_path / "text.npz"),
                        f"{tmp_path / 'text.npz'}: not an npz archive (not a zip file)")
    obj = dict(p, meta=np.array([{"a": 1}], dtype=object))
    cases["pickled"] = (save_npz(tmp_path / "obj.npz", obj),
                        f"{tmp_path / 'obj.npz'}: array 'meta' contains pickled objects; "
                        f"refusing to load")
    miss = {k: v for k, v in p.items() if not k.endswith("encoderblock_1/MlpBlock_3/Dense_1/bias")
            and k != "Transformer/encoder_norm/scale"}
    cases["missing_arrays"] = (save_npz(tmp_path / "miss.npz", miss),
                               f"{tmp_path / 'miss.npz'}: missing arrays for {TINY}: "
                               f"Transformer/encoderblock_1/MlpBlock_3/Dense_1/bias, "
                               f"Transformer/encoder_norm/scale")
    extra = dict(p, **{"foo/bar": np.zeros(3, np.float32), "Transformer/extra": np.zeros(1)})
    cases["unexpected"] = (save_npz(tmp_path / "extra.npz", extra),
                           f"{tmp_path / 'extra.npz'}: unexpected arrays for {TINY}: foo/bar, "
                           f"Transformer/extra")
    bad = dict(p, **{"head/bias": np.zeros(11, np.float32)})
    cases["shape"] = (save_npz(tmp_path / "shape.npz", bad),
                      f"{tmp_path / 'shape.npz'}: array 'head/bias' has shape (11,), expected "
                      f"(10,) for {TINY}")
    q = "Transformer/encoderblock_0/MultiHeadDotProductAttention_1/query/kernel"
    flat = dict(p, **{q: p[q].reshape(32, 32)})
    cases["rank"] = (save_npz(tmp_path / "rank.npz", flat),
                     f"{tmp_path / 'rank.npz'}: array '{q}' has shape (32, 32), expected "
                     f"(hidden, heads, head_dim)")
    pos = dict(p, **{"Transformer/posembed_input/pos_embedding": np.zeros((1, 16, 32), np.float32)})
    cases["grid"] = (save_npz(tmp_path / "grid.npz", pos),
                     f"{tmp_path / 'grid.npz'}: 'Transformer/posembed_input/pos_embedding' "
                     f"(1, 16, 32) has 15 grid positions, which is not a square grid")
    cases["no_vit"] = (save_npz(tmp_path / "other.npz", {"w": np.zeros(2, np.float32)}),
                       f"{tmp_path / 'other.npz'}: missing arrays: embedding/kernel "
                       f"(not a ViT checkpoint?)")
    ints = dict(p, **{"cls": np.zeros((1, 1, 32), np.int64)})
    cases["int"] = (save_npz(tmp_path / "int.npz", ints),
                    f"{tmp_path / 'int.npz'}: array 'cls' has dtype int64, expected floating point")
    return cases


def test_bad_npz_inputs_raise_one_line_errors(tmp_path):
    for name, (src, message) in _bad_inputs(tmp_path).items():
        before = sorted(os.listdir(tmp_path))
        with pytest.raises((ConfigError, DataError)) as e:
            npz.npz_to_paddle(src, str(tmp_path / "dst"), log=quiet)
        assert str(e.value) == message, name
        assert "\n" not in str(e.value)
        assert sorted(os.listdir(tmp_path)) == before, name


@pytest.mark.parametrize("case", ["missing", "not_zip", "pickled", "missing_arrays",
                                  "unexpected", "shape"])
def test_cli_bad_input_exit_2_and_nothing_written(tmp_path, case):
    src, message = _bad_inputs(tmp_path)[case]
    before = sorted(os.listdir(tmp_path))
    r = run_tool("npz2paddle", src, tmp_path / "dst")
    assert r.returncode == 2
    assert r.stderr == f"error: {message}\n"
    assert r.stdout == ""
    assert sorted(os.listdir(tmp_path)) == before


def test_cli_debug_shows_traceback_and_missing_pdparams(tmp_path):
    r = run_tool("paddle2npz", tmp_path / "nothing", tmp_path / "x.npz", "--debug")
    assert r.returncode != 0 and "Traceback" in r.stderr
    r = run_tool("paddle2npz", tmp_path / "nothing", tmp_path / "x.npz")
    assert (r.returncode, r.stderr) == (2, f"error: checkpoint not found: "
                                           f"{tmp_path / 'nothing.pdparams'}\n")


def test_output_directory_must_exist_and_nothing_is_written(tmp_path):
    p = nv.random_official(seed=12)
    src = save_npz(tmp_path / "a.npz", p)
    with pytest.raises(DataError, match="output directory does not exist"):
        npz.npz_to_paddle(src, str(tmp_path / "no" / "dst"), log=quiet)
    assert os.listdir(tmp_path) == ["a.npz"]


def test_map_head_is_refused(tmp_path):
    p = dict(nv.random_official(classifier="gap", seed=13))
    p["MAPHead_0/probe"] = np.zeros((1, 1, 32), np.float32)
    with pytest.raises(ConfigError, match=r"MAP-head pooling \(MAPHead_0\) is not supported"):
        npz.npz_to_paddle(save_npz(tmp_path / "a.npz", p), str(tmp_path / "d"), log=quiet)


# ----------------------------------------------------------------------------- timm
def official_to_timm_reference(p, depth=2):
    """timm names written independently here: torch Linear [out, in], fused qkv rows q|k|v."""
    d = p["embedding/kernel"].shape[-1]
    t = {"patch_embed.proj.weight": p["embedding/kernel"].transpose(3, 2, 0, 1),
         "patch_embed.proj.bias": p["embedding/bias"],
         "pos_embed": p["Transformer/posembed_input/pos_embedding"],
         "norm.weight": p["Transformer/encoder_norm/scale"],
         "norm.bias": p["Transformer/encoder_norm/bias"],
         "head.weight": p["head/kernel"].T, "head.bias": p["head/bias"]}
    if "cls" in p:
        t["cls_token"] = p["cls"]
    for i in range(depth):
        o = f"Transformer/encoderblock_{i}/"
        a = o + "MultiHeadDotProductAttention_1/"
        t[f"blocks.{i}.norm1.weight"] = p[o + "LayerNorm_0/scale"]
        t[f"blocks.{i}.norm1.bias"] = p[o + "LayerNorm_0/bias"]
        t[f"blocks.{i}.attn.qkv.weight"] = np.concatenate(
            [p[a + n + "/kernel"].reshape(d, d).T for n in ("query", "key", "value")])
        t[f"blocks.{i}.attn.qkv.bias"] = np.concatenate(
            [p[a + n + "/bias"].reshape(-1) for n in ("query", "key", "value")])
        t[f"blocks.{i}.attn.proj.weight"] = p[a + "out/kernel"].reshape(d, d).T
        t[f"blocks.{i}.attn.proj.bias"] = p[a + "out/bias"]
        t[f"blocks.{i}.norm2.weight"] = p[o + "LayerNorm_2/scale"]
        t[f"blocks.{i}.norm2.bias"] = p[o + "LayerNorm_2/bias"]
        for j in (0, 1):
            t[f"blocks.{i}.mlp.fc{j + 1}.weight"] = p[o + f"MlpBlock_3/Dense_{j}/kernel"].T
            t[f"blocks.{i}.mlp.fc{j + 1}.bias"] = p[o + f"MlpBlock_3/Dense_{j}/bias"]
    return {k: np.ascontiguousarray(v, np.float32) for k, v in t.items()}


@pytest.mark.parametrize("classifier", ["token", "gap"])
def test_timm2paddle_matches_official_forward_and_roundtrips_bitwise(tmp_path, classifier):
    from safetensors.numpy import load_file, save_file
    p = nv.random_official(seed=14, classifier=classifier)
    src = str(tmp_path / "timm.safetensors")
    save_file(official_to_timm_reference(p), src)
    assert cli("timm2paddle", src, tmp_path / "m", "--num-heads", 2, "--act", "gelu_tanh") == 0
    x = images()
    model = paddle_model(tmp_path / "m")
    assert np.abs(logits_of(model, x) - nv.forward(p, x)).max() <= 2.5e-6
    assert cli("paddle2timm", tmp_path / "m", tmp_path / "back.safetensors") == 0
    a, b = load_file(src), load_file(str(tmp_path / "back.safetensors"))
    assert set(a) == set(b) and all(a[k].tobytes() == b[k].tobytes() and a[k].shape == b[k].shape
                                    for k in a)


def test_timm_default_act_is_exact_gelu(tmp_path):
    from plsc.convert import timm
    from safetensors.numpy import save_file
    p = nv.random_official(seed=15)
    save_file(official_to_timm_reference(p), str(tmp_path / "t.safetensors"))
    res = timm.timm_to_paddle(str(tmp_path / "t.safetensors"), str(tmp_path / "m"), num_heads=2,
                              log=quiet)
    assert res["model_config"]["act"] == "gelu"
    x = images()
    got = logits_of(paddle_model(tmp_path / "m"), x)
    assert np.abs(got - nv.forward(p, x, gelu="erf")).max() <= 3e-6
    assert np.abs(got - nv.forward(p, x, gelu="tanh")).max() > 1e-5  # the form matters


def test_timm_errors(tmp_path):
    from plsc.convert import timm
    from safetensors.numpy import save_file
    t = official_to_timm_reference(nv.random_official(seed=16, classifier="gap"))
    t["fc_norm.weight"], t["fc_norm.bias"] = t.pop("norm.weight"), t.pop("norm.bias")
    save_file(t, str(tmp_path / "fc.safetensors"))
    with pytest.raises(ConfigError, match=r"timm fc_norm \(LayerNorm after average pooling\) is "
                                          r"not supported"):
        timm.timm_to_paddle(str(tmp_path / "fc.safetensors"), str(tmp_path / "m"), log=quiet)
    t = official_to_timm_reference(nv.random_official(seed=16))
    t["blocks.0.ls1.gamma"] = np.ones(32, np.float32)
    save_file(t, str(tmp_path / "ls.safetensors"))
    with pytest.raises(ConfigError) as e:
        timm.timm_to_paddle(str(tmp_path / "ls.safetensors"), str(tmp_path / "m"), num_heads=2,
                            log=quiet)
    assert str(e.value) == (f"{tmp_path / 'ls.safetensors'}: unexpected arrays for {TINY}: "
                            f"blocks.0.ls1.gamma")
    t = official_to_timm_reference(nv.random_official(seed=16))
    save_file(t, str(tmp_path / "w.safetensors"))
    with pytest.raises(ConfigError, match="cannot tell the number of heads for width 32"):
        timm.timm_to_paddle(str(tmp_path / "w.safetensors"), str(tmp_path / "m"), log=quiet)
    t["blocks.1.mlp.fc1.weight"] = t["blocks.1.mlp.fc1.weight"][:, :31].copy()
    save_file(t, str(tmp_path / "s.safetensors"))
    with pytest.raises(ConfigError) as e:
        timm.timm_to_paddle(str(tmp_path / "s.safetensors"), str(tmp_path / "m"), num_heads=2,
                            log=quiet)
    assert str(e.value) == (f"{tmp_path / 's.safetensors'}: array 'blocks.1.mlp.fc1.weight' has "
                            f"shape (64, 31), expected (64, 32) for {TINY}")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 5)
    r = run_tool("timm2paddle", tmp_path / "junk.safetensors", tmp_path / "m")
    assert r.returncode == 2 and r.stderr.startswith(
        f"error: {tmp_path / 'junk.safetensors'}: not a readable safetensors file")
    assert not any(n.startswith("m.") for n in os.listdir(tmp_path))


# ----------------------------------------------------------------------------- PLSC / pretrained
def _converted(tmp_path, seed=17, **kw):
    p = nv.random_official(seed=seed, **kw)
    res = npz.npz_to_paddle(save_npz(tmp_path / "src.npz", p), str(tmp_path / "m"), log=quiet)
    return p, res


def _model(cfg):
    from plsc.models import build_model
    m = build_model(dict(cfg))
    m.eval()
    return m


def test_plsc_fp16_checkpoint_loads_cast_to_fp32(tmp_path):
    import paddle
    from plsc.convert.pretrained import load_pretrained
    _, res = _converted(tmp_path)
    fp16 = {k: v.astype(np.float16) for k, v in res["state"].items()}
    paddle.save({k: paddle.to_tensor(v) for k, v in fp16.items()}, str(tmp_path / "o2.pdparams"))
    a, b = _model(res["model_config"]), _model(res["model_config"])
    logs = []
    report = load_pretrained(a, str(tmp_path / "o2"), log=logs.append)
    assert report["cast"] == {("float16", "float32"): len(fp16)}
    assert logs[0] == f"pretrained: cast {len(fp16)} arrays from float16 to float32"
    assert all(p.dtype == paddle.float32 for p in a.parameters())
    from plsc.weights import assign as assign_state
    assign_state(b, {k: v.astype(np.float32) for k, v in fp16.items()}, "fp32-cast")
    x = images()
    np.testing.assert_array_equal(logits_of(a, x), logits_of(b, x))


def test_load_pretrained_accepts_npz_prefix_and_full_name(tmp_path):
    from plsc.convert.pretrained import load_pretrained
    p, res = _converted(tmp_path)
    x = images()
    ref = nv.forward(p, x)
    for path in (str(tmp_path / "src.npz"), str(tmp_path / "m"), str(tmp_path / "m.pdparams")):
        model = _model(res["model_config"])
        report = load_pretrained(model, path, log=quiet)
        assert len(report["loaded"]) == len(res["state"]) and not report["dropped"]
        assert np.abs(logits_of(model, x) - ref).max() <= 2e-6


def test_load_pretrained_from_timm_safetensors(tmp_path):
    from plsc.convert.pretrained import load_pretrained
    from safetensors.numpy import save_file
    p, res = _converted(tmp_path, seed=19)
    save_file(official_to_timm_reference(p), str(tmp_path / "t.safetensors"))
    model = _model(res["model_config"])
    load_pretrained(model, str(tmp_path / "t.safetensors"), log=quiet)  # heads from the model
    x = images()
    assert np.abs(logits_of(model, x) - nv.forward(p, x)).max() <= 2e-6


def test_finetune_drops_head_and_resizes_pos_embed(tmp_path):
    from plsc.convert.pretrained import load_pretrained
    from plsc.models.pos_embed import resize_pos_embed
    _, res = _converted(tmp_path, pre_logits=16)
    cfg = dict(res["model_config"], img_size=24, class_num=5)
    cfg.pop("representation_size")
    model = _model(cfg)
    init_head = model.state_dict()["head.weight"].numpy().copy()
    logs = []
    report = load_pretrained(model, str(tmp_path / "m"), finetune=True, log=logs.append)
    assert report["dropped"] == ["head0.weight", "head0.bias", "head.weight", "head.bias"]
    assert report["resized"] == {"pos_embed": ((1, 17, 32), (1, 37, 32))}
    assert report["kept_init"] == ["head.weight", "head.bias"]
    assert logs == [
        "pretrained: dropped head0.weight (32, 16), head0.bias (16,) (the model has no such "
        "layer; fine-tuning keeps the model's init)",
        "pretrained: dropped head.weight (16, 10), head.bias (10,) (shape differs from the "
        "model; fine-tuning keeps the model's init)",
        "pretrained: resized pos_embed (1, 17, 32) -> (1, 37, 32) (grid 4x4 -> 6x6, bilinear)",
        f"pretrained: loaded {len(res['state']) - 4} arrays from {tmp_path / 'm'}",
    ]
    sd = model.state_dict()
    np.testing.assert_array_equal(sd["head.weight"].numpy(), init_head)
    np.testing.assert_array_equal(
        sd["pos_embed"].numpy(), resize_pos_embed(res["state"]["pos_embed"], (6, 6), 1))
    np.testing.assert_array_equal(sd["blocks.1.mlp.fc1.weight"].numpy(),
                                  res["state"]["blocks.1.mlp.fc1.weight"])


def test_head_follows_a_changed_pre_logits_layer(tmp_path):
    from plsc.convert.pretrained import load_pretrained
    _, res = _converted(tmp_path, pre_logits=32)  # head input 32 == width: head shape matches
    cfg = dict(res["model_config"])
    cfg.pop("representation_size")
    report = load_pretrained(_model(cfg), str(tmp_path / "m"), finetune=True, log=quiet)
    assert report["dropped"] == ["head0.weight", "head0.bias", "head.weight", "head.bias"]


def test_without_finetune_mismatches_are_errors_not_silent_skips(tmp_path):
    from plsc.convert.pretrained import load_pretrained
    _, res = _converted(tmp_path)
    src = str(tmp_path / "m")
    cfg = dict(res["model_config"], img_size=24, class_num=5)
    with pytest.raises(ConfigError) as e:
        load_pretrained(_model(cfg), src, log=quiet)
    assert str(e.value) == (
        f"{src}: shape mismatch: pos_embed checkpoint (1, 17, 32) vs model (1, 37, 32), "
        f"head.weight checkpoint (32, 10) vs model (32, 5), head.bias checkpoint (10,) vs "
        f"model (5,); set Global.finetune=True to drop the head and resize pos_embed")
    # A mismatch outside head/pos_embed is an error even when fine-tuning (Paddle's
    # set_state_dict would only warn and keep the random init).
    cfg = dict(res["model_config"], mlp_ratio=3.0)
    with pytest.raises(ConfigError) as e:
        load_pretrained(_model(cfg), src, finetune=True, log=quiet)
    assert str(e.value).startswith(
        f"{src}: shape mismatch: blocks.0.mlp.fc1.weight checkpoint (32, 64) vs model (32, 96)")
    cfg = dict(res["model_config"], global_pool="gap")
    with pytest.raises(ConfigError) as e:
        load_pretrained(_model(cfg), src, finetune=True, log=quiet)
    # one line with everything that differs: the extra class token and the pos_embed it implies
    assert str(e.value) == (f"{src}: checkpoint has 1 arrays the model lacks: cls_token; "
                            f"shape mismatch: pos_embed checkpoint (1, 17, 32) vs model (1, 16, 32)")
    cfg = dict(res["model_config"], depth=3)
    with pytest.raises(ConfigError) as e:
        load_pretrained(_model(cfg), src, log=quiet)
    assert str(e.value).startswith(
        f"{src}: checkpoint lacks 12 model arrays: blocks.2.norm1.weight")
    with pytest.raises(ConfigError, match="pos_embed_interp must be one of bilinear, bicubic, "
                                          "got 'nearest'"):
        load_pretrained(_model(res["model_config"]), src, pos_embed_interp="nearest", log=quiet)


# ----------------------------------------------------------------------------- pos-embed resize
def _zoom_reference(grid, new):
    from scipy.ndimage import zoom
    return zoom(grid.astype(np.float64), (new[0] / grid.shape[0], new[1] / grid.shape[1], 1),
                order=1)


@pytest.mark.parametrize("old,new,prefix", [((14, 14), (24, 24), 1), ((24, 24), (14, 14), 1),
                                            ((7, 7), (12, 20), 1), ((6, 6), (9, 9), 0),
                                            ((5, 8), (10, 4), 1)])
def test_bilinear_resize_equals_scipy_zoom_order1(old, new, prefix):
    from plsc.models.pos_embed import resize_pos_embed
    rng = np.random.default_rng(0)
    pe = rng.standard_normal((1, prefix + old[0] * old[1], 16)).astype(np.float32)
    out = resize_pos_embed(pe, new, prefix, "bilinear", old_grid=old)
    assert out.shape == (1, prefix + new[0] * new[1], 16) and out.dtype == np.float32
    np.testing.assert_array_equal(out[:, :prefix], pe[:, :prefix])
    ref = _zoom_reference(pe[0, prefix:].reshape(*old, 16), new)
    assert np.abs(out[0, prefix:].reshape(ref.shape) - ref).max() <= 3e-7


def _bicubic_matrix(n_in, n_out, a=-0.75):
    """Cubic convolution, align_corners=False, border-clamped taps (PLSC/Paddle/PyTorch)."""
    def w(t):
        t = abs(t)
        if t <= 1:
            return (a + 2) * t ** 3 - (a + 3) * t ** 2 + 1
        if t < 2:
            return a * t ** 3 - 5 * a * t ** 2 + 8 * a * t - 4 * a
        return 0.0
    m = np.zeros((n_out, n_in))
    for i in range(n_out):
        src = (i + 0.5) * n_in / n_out - 0.5
        f = int(np.floor(src))
        for k in range(-1, 3):
            m[i, min(max(f + k, 0), n_in - 1)] += w(src - (f + k))
    return m


def test_bicubic_resize_matches_cubic_convolution_and_differs_from_official():
    import paddle
    from plsc.models.pos_embed import resize_pos_embed
    rng = np.random.default_rng(1)
    pe = rng.standard_normal((1, 1 + 49, 8)).astype(np.float32)
    out = resize_pos_embed(pe, (12, 10), 1, "bicubic")
    grid = pe[0, 1:].reshape(7, 7, 8).astype(np.float64)
    ref = np.einsum("ih,hwd,jw->ijd", _bicubic_matrix(7, 12), grid, _bicubic_matrix(7, 10))
    assert np.abs(out[0, 1:].reshape(12, 10, 8) - ref).max() <= 5e-6
    lin = resize_pos_embed(pe, (12, 10), 1, "bilinear")
    assert np.abs(lin - out).max() > 0.1
    t = resize_pos_embed(paddle.to_tensor(pe), (12, 10), 1, "bicubic")  # tensors in, tensors out
    assert isinstance(t, paddle.Tensor) and t.dtype == paddle.float32
    np.testing.assert_array_equal(t.numpy(), out)


def test_resize_errors():
    from plsc.models.pos_embed import resize_pos_embed
    with pytest.raises(ConfigError) as e:
        resize_pos_embed(np.zeros((1, 17, 4), np.float32), (3, 3), 0)
    assert str(e.value) == "pos_embed has 17 rows: 0 prefix + 17, which is not a 4x4 grid"
