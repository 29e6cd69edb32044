"""PLSC's TransformOpSampler with Mixup/Cutmix and their per-op label smoothing `epsilon`,
against a numpy re-derivation (PLSC's formulas) that replays the same random draws."""
import numpy as np
import paddle
import paddle.nn.functional as F
import pytest

from plsc.data import Cutmix, Mixup, create_batch_transform
from plsc.errors import ConfigError

C, B, H, W = 5, 6, 8, 10
DEIT_OPS = [{"TransformOpSampler": {
    "Mixup": {"alpha": 0.8, "prob": 0.5, "epsilon": 0.1, "class_num": C},
    "Cutmix": {"alpha": 1.0, "prob": 0.5, "epsilon": 0.1, "class_num": C}}}]


def batch(seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(B, 3, H, W)).astype(np.float32), rng.integers(0, C, B)


def smooth(labels, eps):
    """PLSC: one-hot, then paddle's label_smooth: (1 - eps) * y + eps / class_num."""
    return (1 - eps) * np.eye(C)[labels] + eps / C


def mixup_ref(images, labels, rng, alpha, eps):
    lam = rng.beta(alpha, alpha)
    perm = rng.permutation(B)
    y = smooth(labels, eps)
    return lam * images + (1 - lam) * images[perm], lam * y + (1 - lam) * y[perm]


def cutmix_ref(images, labels, rng, alpha, eps):
    lam = rng.beta(alpha, alpha)
    perm = rng.permutation(B)
    cut = np.sqrt(1 - lam)
    ch, cw = int(H * cut), int(W * cut)
    cy, cx = rng.integers(H), rng.integers(W)
    t, b = np.clip(cy - ch // 2, 0, H), np.clip(cy + ch // 2, 0, H)
    left, right = np.clip(cx - cw // 2, 0, W), np.clip(cx + cw // 2, 0, W)
    out = images.copy()
    out[..., t:b, left:right] = images[perm][..., t:b, left:right]
    lam = 1 - (b - t) * (right - left) / (H * W)
    y = smooth(labels, eps)
    return out, lam * y + (1 - lam) * y[perm]


def test_smoothing_is_paddles_label_smooth_eps_over_class_num():
    labels = np.array([0, 3, 4])
    want = F.label_smooth(paddle.to_tensor(np.eye(C, dtype=np.float32)[labels]), epsilon=0.1)
    np.testing.assert_allclose(smooth(labels, 0.1), want.numpy(), atol=1e-7)
    assert smooth(labels, 0.1)[0, 1] == pytest.approx(0.1 / C)  # not 0.1 / (C - 1)


@pytest.mark.parametrize("op, ref, alpha", [(Mixup, mixup_ref, 0.8), (Cutmix, cutmix_ref, 1.0)])
@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_mixup_and_cutmix_with_epsilon_match_numpy(op, ref, alpha, eps):
    images, labels = batch()
    for seed in range(5):
        out, soft = op(alpha=alpha, class_num=C, epsilon=eps)(
            images, labels, np.random.default_rng(seed))
        want_x, want_y = ref(images, labels, np.random.default_rng(seed), alpha, eps)
        np.testing.assert_allclose(out, want_x, atol=1e-6)
        np.testing.assert_allclose(soft, want_y, atol=1e-6)
        np.testing.assert_allclose(soft.sum(1), 1.0, atol=1e-6)


def test_smoothing_applies_on_paddle_tensors_too():
    images, labels = batch()
    _, soft = Mixup(alpha=0.8, class_num=C, epsilon=0.1)(
        paddle.to_tensor(images), paddle.to_tensor(labels), np.random.default_rng(3))
    _, want = mixup_ref(images, labels, np.random.default_rng(3), 0.8, 0.1)
    np.testing.assert_allclose(soft.numpy(), want, atol=1e-6)


def test_deit_transform_op_sampler_picks_mixup_or_cutmix_each_batch():
    op = create_batch_transform(DEIT_OPS)
    images, labels = batch(1)
    chosen = []
    for seed in range(16):
        out, soft = op(images, labels, np.random.default_rng(seed))
        rng = np.random.default_rng(seed)
        assert rng.random() < 1.0  # probs sum to 1: every batch is mixed
        k = int(rng.choice(2, p=[0.5, 0.5]))
        want_x, want_y = (mixup_ref, cutmix_ref)[k](images, labels, rng, (0.8, 1.0)[k], 0.1)
        np.testing.assert_allclose(out, want_x, atol=1e-6)
        np.testing.assert_allclose(soft, want_y, atol=1e-6)
        chosen.append(k)
    assert set(chosen) == {0, 1}


def test_pass_through_keeps_plain_one_hot_labels():
    """Probs summing below 1 leave the rest to PLSC's "None" op: the batch unchanged, labels
    one-hot and unsmoothed (the ops' epsilon belongs to the ops)."""
    op = create_batch_transform([{"TransformOpSampler": {
        "Mixup": {"alpha": 0.8, "prob": 0.2, "epsilon": 0.1, "class_num": C}}}])
    images, labels = batch(2)
    passed = 0
    for seed in range(12):
        out, soft = op(images, labels, np.random.default_rng(seed))
        if np.random.default_rng(seed).random() >= 0.2:
            passed += 1
            np.testing.assert_array_equal(out, images)
            np.testing.assert_array_equal(soft, np.eye(C)[labels])
    assert passed > 0


@pytest.mark.parametrize("ops, message", [
    ({"Mixup": {"alpha": 0.8, "prob": 0.5, "epsilon": 1.5}},
     r"TransformOpSampler\.Mixup\.epsilon"),
    ({"Mixup": {"prob": 0.7}, "Cutmix": {"prob": 0.5}}, r"^TransformOpSampler: the probs sum"),
    ({"TransformOpSampler": {}}, r"^TransformOpSampler\.TransformOpSampler: only single"),
])
def test_config_errors_are_one_line(ops, message):
    with pytest.raises(ConfigError, match=message) as e:
        create_batch_transform([{"TransformOpSampler": ops}], class_num=C)
    assert "\n" not in str(e.value)
