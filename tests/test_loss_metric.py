"""Losses and TopkAcc against numpy float64 reimplementations."""
import numpy as np
import paddle
import pytest

from plsc.errors import ConfigError
from plsc.loss import build_loss
from plsc.metric import build_metrics

B, C = 6, 7


def log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def one_hot(y, c=C):
    return np.eye(c)[y]


def bce_with_logits(x, t):
    return np.maximum(x, 0) - x * t + np.log1p(np.exp(-np.abs(x)))


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    x = rng.normal(0, 2, (B, C))
    y = rng.integers(0, C, B)
    soft = rng.dirichlet(np.ones(C), B)
    multi = (rng.random((B, C)) < 0.3).astype(np.float64)
    multi[0] = 0.0
    multi[0, 3] = 1.0
    return x, y, soft, multi


def t32(a):
    return paddle.to_tensor(np.asarray(a, dtype=np.float32))


def t64i(a):
    return paddle.to_tensor(np.asarray(a, dtype=np.int64))


def value(cfg, x, labels):
    out = build_loss([cfg])(t32(x), labels)
    assert out["loss"].dtype == paddle.float32 and out["loss"].shape == []
    return float(out["loss"])


def test_celoss_hard_labels_1d_and_2d(data):
    x, y, _, _ = data
    want = -(one_hot(y) * log_softmax(x)).sum(-1).mean()
    assert value({"CELoss": None}, x, t64i(y)) == pytest.approx(want, rel=1e-6)
    assert value({"CELoss": {"weight": 1.0}}, x, t64i(y[:, None])) == pytest.approx(want, rel=1e-6)


def test_celoss_label_smoothing_hard_and_soft(data):
    x, y, soft, _ = data
    eps = 0.1
    for labels, tgt in ((t64i(y), one_hot(y)), (t32(soft), soft)):
        smoothed = (1 - eps) * tgt + eps / C
        want = -(smoothed * log_softmax(x)).sum(-1).mean()
        assert value({"CELoss": {"epsilon": eps}}, x, labels) == pytest.approx(want, rel=1e-6)


def test_celoss_and_soft_target_ce_with_soft_labels(data):
    x, _, soft, _ = data
    want = -(soft * log_softmax(x)).sum(-1).mean()
    assert value({"CELoss": None}, x, t32(soft)) == pytest.approx(want, rel=1e-6)
    assert value({"SoftTargetCELoss": None}, x, t32(soft)) == pytest.approx(want, rel=1e-6)


def test_vitceloss_sigmoid_with_plsc_smoothing(data):
    x, y, _, multi = data
    eps = 1e-4
    for labels, tgt in ((t64i(y), one_hot(y)), (t32(multi), multi)):
        target = tgt * (1 - eps) + eps
        want = bce_with_logits(x, target).sum(-1).mean()
        got = value({"ViTCELoss": {"weight": 1.0, "epsilon": eps}}, x, labels)
        assert got == pytest.approx(want, rel=1e-6)
    # default: sigmoid, no smoothing
    want = bce_with_logits(x, one_hot(y)).sum(-1).mean()
    assert value({"ViTCELoss": None}, x, t64i(y)) == pytest.approx(want, rel=1e-6)


def test_vitceloss_softmax_uses_unnormalised_smoothed_targets(data):
    x, y, _, _ = data
    eps = 0.01
    target = one_hot(y) * (1 - eps) + eps  # sums to 1 + (C - 1) * eps, as in PLSC
    want = -(target * log_softmax(x)).sum(-1).mean()
    got = value({"ViTCELoss": {"type": "softmax", "epsilon": eps}}, x, t64i(y))
    assert got == pytest.approx(want, rel=1e-6)
    plain = -(one_hot(y) * log_softmax(x)).sum(-1).mean()
    assert value({"ViTCELoss": {"type": "softmax"}}, x, t64i(y)) == pytest.approx(plain, rel=1e-6)


def test_vitceloss_gradient_matches_numpy(data):
    x, y, _, _ = data
    eps = 0.05
    logits = t32(x)
    logits.stop_gradient = False
    out = build_loss([{"ViTCELoss": {"epsilon": eps}}])(logits, t64i(y))
    out["loss"].backward()
    target = one_hot(y) * (1 - eps) + eps
    want = (1 / (1 + np.exp(-x)) - target) / B
    np.testing.assert_allclose(logits.grad.numpy(), want, rtol=1e-5, atol=1e-7)


def test_fp16_logits_are_computed_in_float32(data):
    x, y, _, _ = data
    x16 = x.astype(np.float16)
    out = build_loss([{"CELoss": None}])(paddle.to_tensor(x16), t64i(y))
    assert out["loss"].dtype == paddle.float32
    want = -(one_hot(y) * log_softmax(x16.astype(np.float64))).sum(-1).mean()
    assert float(out["loss"]) == pytest.approx(want, rel=1e-6)


def test_combined_loss_weights_and_keys(data):
    x, y, _, _ = data
    fn = build_loss([{"CELoss": {"weight": 0.5}}, {"ViTCELoss": {"weight": 2, "epsilon": 1e-4}},
                     {"CELoss": {"weight": 1.0, "epsilon": 0.1}}])
    out = fn(t32(x), t64i(y))
    assert set(out) == {"loss", "CELoss", "ViTCELoss", "CELoss_1"}
    ce = -(one_hot(y) * log_softmax(x)).sum(-1).mean()
    vit = bce_with_logits(x, one_hot(y) * (1 - 1e-4) + 1e-4).sum(-1).mean()
    ce_s = -(((1 - 0.1) * one_hot(y) + 0.1 / C) * log_softmax(x)).sum(-1).mean()
    assert float(out["CELoss"]) == pytest.approx(0.5 * ce, rel=1e-6)
    assert float(out["ViTCELoss"]) == pytest.approx(2 * vit, rel=1e-6)
    assert float(out["loss"]) == pytest.approx(0.5 * ce + 2 * vit + ce_s, rel=1e-6)


@pytest.mark.parametrize("cfg, message", [
    ([{"ViTCELoss": {"type": "sigmod"}}],
     "Loss.Train.0.ViTCELoss.type: expected one of sigmoid, softmax, got str 'sigmod'"),
    ([{"CELoss": {"epsilon": 1.5}}], "Loss.Train.0.CELoss.epsilon: expected float in [0, 1) or null, got float 1.5"),
    ([{"CELoss": {"weight": -1}}], "Loss.Train.0.CELoss.weight: expected float >= 0, got int -1"),
    ([{"CELoss": {"eps": 0.1}}], "unknown key 'Loss.Train.0.CELoss.eps'; did you mean 'Loss.Train.0.CELoss.epsilon'?"),
    ([{"CEloss": None}], "did you mean 'CELoss'"),
    ([], "Loss.Train must be a non-empty list"),
    ([{"CELoss": None, "ViTCELoss": None}], "Loss.Train.0: expected a one-key mapping {loss name: {arguments}}, got dict "),
    ([{"CELoss": 1.0}], "Loss.Train.0.CELoss: expected a mapping of arguments or null, got float 1.0"),
])
def test_loss_config_errors(cfg, message):
    with pytest.raises(ConfigError) as e:
        build_loss(cfg, section="Loss.Train")
    assert message in str(e.value) and "\n" not in str(e.value)


def test_label_shape_mismatch_is_a_config_error(data):
    x, _, _, _ = data
    with pytest.raises(ConfigError, match=r"labels of shape \[6, 5\] do not fit logits"):
        build_loss([{"CELoss": None}])(t32(x), t32(np.zeros((B, 5))))


# --- TopkAcc ---


def topk_counts(x, y, ks):
    order = np.argsort(-x, axis=-1)
    return {f"top{k}": float((order[:, :k] == y[:, None]).any(-1).sum()) for k in ks}


def test_topk_counts_match_numpy():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(50, 10))
    y = rng.integers(0, 10, 50)
    fn = build_metrics([{"TopkAcc": {"topk": [1, 5]}}])
    got = fn(t32(x), t64i(y))
    assert got == topk_counts(x, y, [1, 5])
    assert 0 < got["top1"] < got["top5"] < 50
    assert fn(t32(x), t64i(y[:, None])) == got


def test_topk_soft_labels_use_argmax_and_k_is_clamped():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(20, 4))
    soft = rng.dirichlet(np.ones(4), 20)
    got = build_metrics([{"TopkAcc": {"topk": [1, 2, 5]}}])(t32(x), t32(soft))
    want = topk_counts(x, soft.argmax(-1), [1, 2])
    assert got == {**want, "top5": 20.0}


def test_metrics_empty_and_errors():
    assert build_metrics(None)(t32(np.zeros((2, 3))), t64i([0, 1])) == {}
    for bad in ([0, 1], "1,5", [1.5], []):
        with pytest.raises(ConfigError) as e:
            build_metrics([{"TopkAcc": {"topk": bad}}])
        assert str(e.value).startswith("Metric.0.TopkAcc.topk: expected list of int >= 1 "
                                       "(at least one), got ")
    with pytest.raises(ConfigError, match="did you mean 'TopkAcc'"):
        build_metrics([{"TopKAcc": None}])
