"""plsc.apis on a tiny ViT: preprocessing, predictions, features and attention rollout, each
checked against an independent numpy computation written here."""
import os

import cv2
import numpy as np
import paddle
import pytest

from plsc import apis
from plsc.config import get_config
from plsc.data.synthetic import ensure_generated
from plsc.engine.checkpoint import fp32_state_dict
from plsc.errors import ConfigError, DataError
from plsc.models import build_model
from tiny import tiny_config


def make_checkpoint(cfg_path, prefix, seed=0, **model_overrides):
    """A random checkpoint for the config's model; the head is randomised too (the model
    initialises it to zero, which would make every prediction a tie)."""
    cfg = get_config(cfg_path)
    paddle.seed(seed)
    model = build_model({**dict(cfg.Model), **model_overrides})
    rng = np.random.default_rng(seed)
    state = {k: v + 0.2 * rng.standard_normal(v.shape).astype(np.float32)
             for k, v in fp32_state_dict(model).items()}
    paddle.save(state, prefix + ".pdparams")
    return prefix


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("apis")
    data = tmp / "shapes"
    cfg_path = tiny_config(tmp, data)
    ensure_generated(str(data), 4, 32, 13, 16, 0)  # the tiny config's SyntheticShapes
    ckpt = make_checkpoint(cfg_path, str(tmp / "w"))
    images = sorted(str(p) for p in (data / "val").rglob("*.jpg"))
    model = apis.init_model(cfg_path, ckpt, device="cpu")
    return {"cfg": cfg_path, "ckpt": ckpt, "images": images, "model": model, "tmp": tmp,
            "labels": (data / "labels.txt").read_text().split()}


def reference_input(path):
    """The tiny config's eval transforms by hand: decode RGB, x/255, (x - 0.5) / 0.5, CHW."""
    img = cv2.cvtColor(cv2.imread(path, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    x = (img.astype(np.float64) / 255.0 - 0.5) / 0.5
    return x.transpose(2, 0, 1)


def np_softmax(z):
    z = np.asarray(z, np.float64)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


# ----------------------------------------------------------------------------- preprocessing

def test_preprocess_matches_eval_transforms(tiny):
    m = tiny["model"]
    for path in tiny["images"][:3]:
        x = m.preprocess(path)
        assert x.dtype == np.float32 and x.shape == (3, 16, 16)
        assert np.abs(x - reference_input(path)).max() < 1e-6


def test_array_input_equals_path_input(tiny):
    m, path = tiny["model"], tiny["images"][0]
    rgb = cv2.cvtColor(cv2.imread(path), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(m.preprocess(rgb), m.preprocess(path))
    gray = rgb[:, :, 0]
    np.testing.assert_array_equal(m.preprocess(gray), m.preprocess(np.stack([gray] * 3, 2)))


def test_preprocess_errors(tiny, tmp_path):
    m = tiny["model"]
    with pytest.raises(DataError, match=r"image not found: .*nope\.jpg"):
        m.preprocess(str(tmp_path / "nope.jpg"))
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match=r"cannot decode image .*bad\.jpg \(not an image file\?\)"):
        m.preprocess(str(bad))
    with pytest.raises(DataError, match=r"must be uint8 HWC RGB, got dtype float32"):
        m.preprocess(np.zeros((16, 16, 3), np.float32))
    with pytest.raises(DataError, match=r"preprocessing produced shape \[3, 20, 20\] but the "
                                        r"model expects \[3, 16, 16\]"):
        m.preprocess(np.zeros((20, 20, 3), np.uint8))


def test_default_preprocessing_without_eval_loader(tiny, tmp_path):
    """A Model-only config (as tools/convert.py writes) gets the official eval transforms:
    squash-resize to img_size, pixels to [-1, 1]."""
    cfg = {"Model": dict(get_config(tiny["cfg"]).Model)}
    m = apis.init_model(cfg, tiny["ckpt"], device="cpu")
    img = np.random.default_rng(0).integers(0, 256, (24, 40, 3), dtype=np.uint8)
    resized = cv2.resize(img, (16, 16), interpolation=cv2.INTER_LINEAR)
    expect = ((resized.astype(np.float64) / 255.0 - 0.5) / 0.5).transpose(2, 0, 1)
    assert np.abs(m.preprocess(img) - expect).max() < 1e-6
    assert m.class_names is None  # no dataset, class_num 4: nothing to name the classes with


# ----------------------------------------------------------------------------- predictions

def test_inference_model_results(tiny):
    m, paths = tiny["model"], tiny["images"][:6]
    results = apis.inference_model(m, paths)
    assert isinstance(results, list) and len(results) == 6
    x = paddle.to_tensor(np.stack([reference_input(p) for p in paths]).astype(np.float32))
    with paddle.no_grad():
        logits = m.model(x).numpy()
    probs = np_softmax(logits)
    for r, row_logits, row in zip(results, logits, probs):
        assert set(r) == {"pred_label", "pred_score", "pred_class", "topk_labels",
                          "topk_scores", "topk_classes"}
        assert isinstance(r["pred_label"], int) and isinstance(r["pred_score"], float)
        assert r["pred_label"] == int(np.argmax(row_logits))
        assert abs(r["pred_score"] - row.max()) < 1e-6
        # 4 classes < Infer.topk 5: all of them, best first, scores = softmax
        assert r["topk_labels"] == [int(i) for i in np.argsort(-row)]
        np.testing.assert_allclose(r["topk_scores"], row[r["topk_labels"]], atol=1e-6)
        assert r["topk_scores"] == sorted(r["topk_scores"], reverse=True)
        assert r["pred_class"] == tiny["labels"][r["pred_label"]]
        assert r["topk_classes"] == [tiny["labels"][i] for i in r["topk_labels"]]
    assert len({r["pred_label"] for r in results}) > 1  # the random head is not degenerate


def test_inference_model_single_and_topk(tiny):
    m, path = tiny["model"], tiny["images"][0]
    one = apis.inference_model(m, path)
    assert isinstance(one, dict)
    assert one == apis.inference_model(m, [path])[0]
    top2 = apis.inference_model(m, path, topk=2)
    assert top2["topk_labels"] == one["topk_labels"][:2]
    # batching does not change results (beyond float rounding of differently blocked GEMMs)
    many = tiny["images"][:5]
    for a, b in zip(apis.inference_model(m, many, batch_size=2), apis.inference_model(m, many)):
        assert a["topk_labels"] == b["topk_labels"]
        np.testing.assert_allclose(a["topk_scores"], b["topk_scores"], atol=1e-6)


def test_class_names_from_label_file(tiny, tmp_path):
    plain = tmp_path / "plain.txt"
    plain.write_text("a\nb\nc\nd\n")
    indexed = tmp_path / "indexed.txt"
    indexed.write_text("2 two words\n0 zero\n3 three\n1 one\n")
    assert apis.load_class_names(str(plain), 4) == ["a", "b", "c", "d"]
    assert apis.load_class_names(str(indexed), 4) == ["zero", "one", "two words", "three"]
    with pytest.raises(ConfigError, match=r"label file .*plain\.txt has 4 class names but the "
                                          r"model has class_num 5"):
        apis.load_class_names(str(plain), 5)
    with pytest.raises(ConfigError, match=r"label file not found: missing\.txt"):
        apis.load_class_names("missing.txt")
    cfg = get_config(tiny["cfg"], [f"Infer.label_file={indexed}"])
    names, source = apis.resolve_class_names(cfg, 4)
    assert names == ["zero", "one", "two words", "three"] and "Infer.label_file" in source


def test_imagenet_builtin_names():
    names = apis.load_class_names("imagenet1k", 1000)
    assert names[0] == "tench" and names[1] == "goldfish" and names[281] == "tabby"
    assert names[409] == "analog clock" and names[999] == "toilet tissue"
    assert all(n and n == n.strip() for n in names)
    cfg = {"Model": {"name": "VisionTransformer", "class_num": 1000}}
    from plsc.config import AttrDict, validate_config

    resolved, source = apis.resolve_class_names(validate_config(AttrDict(cfg)), 1000)
    assert resolved == names and source == "built-in imagenet1k"


def test_checkpoint_mismatch_is_one_line_error(tiny, tmp_path):
    other = make_checkpoint(tiny["cfg"], str(tmp_path / "other"), embed_dim=48)
    with pytest.raises(ConfigError) as e:
        apis.init_model(tiny["cfg"], other, device="cpu")
    assert "shape mismatch" in str(e.value) and "\n" not in str(e.value)


# ----------------------------------------------------------------------------- features

def test_extract_feat_equals_forward_features(tiny):
    m, paths = tiny["model"], tiny["images"][:3]
    feats = apis.extract_feat(m, paths)
    x = paddle.to_tensor(np.stack([m.preprocess(p) for p in paths]))
    with paddle.no_grad():
        tokens = m.model.forward_features(x).numpy()
    assert feats["patch_tokens"].shape == (3, 32, 4, 4)  # D 32, 16px / patch 4
    assert feats["cls_feature"].shape == (3, 32)
    np.testing.assert_array_equal(feats["cls_feature"], tokens[:, 0])
    # grid position (i, j) is token 1 + 4 i + j (row-major patches after the class token)
    for i, j in [(0, 0), (1, 3), (3, 2)]:
        np.testing.assert_array_equal(feats["patch_tokens"][:, :, i, j], tokens[:, 1 + 4 * i + j])


def test_extract_feat_gap_model(tiny, tmp_path):
    cfg = get_config(tiny["cfg"], ["Model.global_pool=gap"])
    ckpt = make_checkpoint(tiny["cfg"], str(tmp_path / "gap"), global_pool="gap")
    m = apis.init_model(cfg, ckpt, device="cpu")
    feats = apis.extract_feat(m, tiny["images"][0])
    x = paddle.to_tensor(m.preprocess(tiny["images"][0])[None])
    with paddle.no_grad():
        tokens = m.model.forward_features(x).numpy()  # no class token: 16 patch tokens
    assert tokens.shape == (1, 16, 32)
    np.testing.assert_allclose(feats["cls_feature"], tokens.mean(axis=1), atol=1e-6)
    np.testing.assert_array_equal(feats["patch_tokens"][0, :, 2, 1], tokens[0, 9])


# ----------------------------------------------------------------------------- rollout

def reference_rollout(attns, prefix, discard_ratio=0.0):
    """Loop-per-image reference: average heads, drop the weakest entries outside the prefix
    columns, add I, renormalise rows, multiply later layers on the left."""
    b, _, n, _ = attns[0].shape
    out = []
    for i in range(b):
        joint = np.eye(n)
        for layer in attns:
            a = np.asarray(layer[i], np.float64).mean(axis=0)
            if discard_ratio:
                cols = list(range(prefix, n))
                values = sorted((a[r, c], r, c) for r in range(n) for c in cols)
                for _, r, c in values[:int(discard_ratio * n * len(cols))]:
                    a[r, c] = 0.0
            a = a + np.eye(n)
            a = a / a.sum(axis=1, keepdims=True)
            joint = a @ joint
        out.append((joint[0, prefix:] if prefix else joint.mean(axis=0), joint))
    return np.stack([o[0] for o in out]), np.stack([o[1] for o in out])


def random_attention(rng, layers, b, h, n):
    logits = rng.standard_normal((layers, b, h, n, n)) * 2
    e = np.exp(logits)
    return list(e / e.sum(-1, keepdims=True))


@pytest.mark.parametrize("prefix", [1, 0])
@pytest.mark.parametrize("discard", [0.0, 0.5])
def test_attention_rollout_matches_reference(prefix, discard):
    attns = random_attention(np.random.default_rng(3), 3, 2, 4, 5)
    rows, joint = apis.attention_rollout(attns, prefix, discard, return_matrix=True)
    ref_rows, ref_joint = reference_rollout(attns, prefix, discard)
    assert rows.shape == (2, 5 - prefix) and joint.shape == (2, 5, 5)
    np.testing.assert_allclose(joint, ref_joint, atol=1e-12)
    np.testing.assert_allclose(rows, ref_rows, atol=1e-12)
    np.testing.assert_allclose(joint.sum(axis=-1), 1.0, atol=1e-12)


def test_attention_rollout_single_layer_closed_form():
    """One layer without discarding: rollout = (A_mean + I) / 2 (A's rows already sum to 1)."""
    attns = random_attention(np.random.default_rng(4), 1, 1, 3, 4)
    rows, joint = apis.attention_rollout(attns, 1, return_matrix=True)
    expect = (attns[0][0].mean(axis=0) + np.eye(4)) / 2
    np.testing.assert_allclose(joint[0], expect, atol=1e-12)
    np.testing.assert_allclose(rows[0], expect[0, 1:], atol=1e-12)


def test_attention_rollout_errors():
    attns = random_attention(np.random.default_rng(5), 1, 1, 2, 3)
    with pytest.raises(ConfigError, match=r"discard_ratio must be in \[0, 1\), got 1.0"):
        apis.attention_rollout(attns, 1, 1.0)
    with pytest.raises(ConfigError, match=r"at least one layer"):
        apis.attention_rollout([], 1)


def test_attention_map_on_model(tiny):
    m, path = tiny["model"], tiny["images"][0]
    rollout, image = apis.attention_map(m, path)
    x = paddle.to_tensor(m.preprocess(path)[None])
    with paddle.no_grad():
        _, attns = m.model.forward_features(x, return_attn=True)
    ref, _ = reference_rollout([a.numpy() for a in attns], 1)
    assert rollout.shape == (4, 4) and image.shape == (16, 16, 3) and image.dtype == np.uint8
    np.testing.assert_allclose(rollout.ravel(), ref[0], atol=1e-9)
    np.testing.assert_array_equal(image, cv2.cvtColor(cv2.imread(path), cv2.COLOR_BGR2RGB))


def test_exported_only_apis_refuse_predictor(tiny):
    fake = apis.Classifier("predictor", tiny["model"].preprocess, None, 5, "x")
    with pytest.raises(ConfigError, match=r"extract_feat needs the dygraph model"):
        apis.extract_feat(fake, tiny["images"][0])


def test_device_argument():
    with pytest.raises(ConfigError, match=r"device must be 'cpu', 'gpu' or 'gpu:N', got 'tpu'"):
        apis.init_model({"Model": {"name": "VisionTransformer"}}, device="tpu")
    if not paddle.is_compiled_with_cuda():
        with pytest.raises(ConfigError, match=r"this Paddle build sees no GPU"):
            apis.init_model({"Model": {"name": "VisionTransformer"}}, device="gpu")
    assert os.path.isfile(apis.BUILTIN_LABELS["imagenet1k"])
