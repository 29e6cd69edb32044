"""Batch transforms (Mixup, Cutmix), run by the engine on a whole batch of tensors.

Call: `bt(images, labels, rng) -> (images, soft_labels)`; images [B, C, H, W], labels int64 [B]
or already soft/multi-hot float [B, classes]; soft_labels float32 [B, classes]. `rng` is a numpy
Generator the engine seeds per step, so the mixing is reproducible on resume. Works on paddle
tensors (the engine) and on numpy arrays (tests, tools) alike. Label smoothing stays in the loss,
except PLSC's per-op `epsilon` (DeiT's configs smooth through Mixup/Cutmix): the one-hot labels
become `(1 - epsilon) * y + epsilon / class_num` (paddle's F.label_smooth, PLSC's formula)
before they are mixed; epsilon 0 (the default) leaves them one-hot.

Each rank mixes its own local batch with a permutation of itself, like every data-parallel
Mixup implementation; the images are mixed with `x[perm]`.
"""
import math
from typing import Annotated, Optional

import numpy as np

from ..config import between, ge, gt
from ..errors import ConfigError
from ..registry import BATCH_TRANSFORMS

Alpha = Annotated[float, gt(0)]
Probability = Annotated[float, between(0, 1)]
ClassNum = Optional[Annotated[int, ge(1)]]  # null: the dataset's (or Model.class_num)
Epsilon = Annotated[float, between(0, 1)]


def _is_numpy(x):
    return isinstance(x, np.ndarray)


def soft_labels(labels, class_num):
    """int labels [B] (or [B, 1]) -> one-hot float32 [B, class_num]; float [B, C] passes through."""
    if _is_numpy(labels):
        if labels.ndim == 2 and labels.shape[1] != 1:
            return labels.astype(np.float32)
        return np.eye(class_num, dtype=np.float32)[labels.reshape(-1).astype(np.int64)]
    import paddle
    import paddle.nn.functional as F

    if labels.ndim == 2 and labels.shape[1] != 1:
        return labels.astype("float32")
    return F.one_hot(labels.reshape([-1]).astype("int64"), class_num).astype(paddle.float32)


def _take(x, perm):
    if _is_numpy(x):
        return x[perm]
    import paddle

    return paddle.gather(x, paddle.to_tensor(perm, dtype="int64"), axis=0)


def _check_prob(op, key, p):
    # OpSampler's `prob` sits inside its free-form {Name: {args}} items, out of the schema's reach
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p <= 1:
        raise ConfigError(f"{op}.{key}: expected a number in [0, 1], got {p!r}")
    return float(p)


def _class_num(op, class_num):
    """class_num, which may only arrive at build time (from the dataset or the model)."""
    if class_num is None:
        raise ConfigError(f"{op}: class_num is not set; give it in batch_transform_ops or set the "
                          "dataset's class_num")
    return class_num


class _Mixer:
    """Shared plumbing: class_num (may come from the dataset at build time) and label mixing."""

    def __init__(self, alpha, class_num, epsilon=0.0):
        self.alpha = alpha
        self.class_num = class_num
        self.epsilon = epsilon

    def set_class_num(self, class_num):
        if self.class_num is None:
            self.class_num = class_num

    def _mix_labels(self, labels, perm, lam):
        class_num = _class_num(type(self).__name__, self.class_num)
        y = soft_labels(labels, class_num)
        if self.epsilon:
            y = y * (1.0 - self.epsilon) + self.epsilon / class_num
        return y * lam + _take(y, perm) * (1.0 - lam)

    def __call__(self, images, labels, rng):
        lam = float(rng.beta(self.alpha, self.alpha))
        perm = rng.permutation(images.shape[0])
        return self.mix(images, labels, rng, lam, perm)


@BATCH_TRANSFORMS.register()
class Mixup(_Mixer):
    """x = lam*x + (1-lam)*x[perm], same for the labels; lam ~ Beta(alpha, alpha)."""

    def __init__(self, alpha: Alpha = 0.8, class_num: ClassNum = None, epsilon: Epsilon = 0.0):
        super().__init__(alpha, class_num, epsilon)

    def mix(self, images, labels, rng, lam, perm):
        mixed = images * lam + _take(images, perm) * (1.0 - lam)
        return mixed, self._mix_labels(labels, perm, lam)


def cutmix_box(height, width, lam, rng):
    """(top, bottom, left, right) of a box with area about (1-lam)*H*W, center uniform, clipped."""
    cut = math.sqrt(1.0 - lam)
    ch, cw = int(height * cut), int(width * cut)
    cy, cx = int(rng.integers(height)), int(rng.integers(width))
    top, bottom = np.clip([cy - ch // 2, cy + ch // 2], 0, height)
    left, right = np.clip([cx - cw // 2, cx + cw // 2], 0, width)
    return int(top), int(bottom), int(left), int(right)


@BATCH_TRANSFORMS.register()
class Cutmix(_Mixer):
    """Paste a box from x[perm] into x; labels mixed by the box's actual area fraction."""

    def __init__(self, alpha: Alpha = 1.0, class_num: ClassNum = None, epsilon: Epsilon = 0.0):
        super().__init__(alpha, class_num, epsilon)

    def mix(self, images, labels, rng, lam, perm):
        H, W = images.shape[-2], images.shape[-1]
        top, bottom, left, right = cutmix_box(H, W, lam, rng)
        out = images.copy() if _is_numpy(images) else images.clone()
        if bottom > top and right > left:
            out[..., top:bottom, left:right] = _take(images, perm)[..., top:bottom, left:right]
        lam = 1.0 - (bottom - top) * (right - left) / float(H * W)
        return out, self._mix_labels(labels, perm, lam)


@BATCH_TRANSFORMS.register()
class MixupCutmix:
    """Per batch: with probability `prob` mix, choosing Cutmix with `switch_prob` and Mixup
    otherwise (timm's scheme); else labels become one-hot and images pass through."""

    def __init__(self, mixup_alpha: Alpha = 0.8, cutmix_alpha: Alpha = 1.0,
                 switch_prob: Probability = 0.5, prob: Probability = 1.0,
                 class_num: ClassNum = None):
        self.mixup = Mixup(mixup_alpha, class_num)
        self.cutmix = Cutmix(cutmix_alpha, class_num)
        self.choices = [(self.mixup, 1.0 - switch_prob), (self.cutmix, switch_prob)]
        self.prob = prob
        self.class_num = class_num

    def set_class_num(self, class_num):
        for op, _ in self.choices:
            op.set_class_num(class_num)
        self.class_num = self.mixup.class_num

    def __call__(self, images, labels, rng):
        return _choose(self.choices, self.prob, images, labels, rng, self.class_num, "MixupCutmix")


def _choose(choices, prob, images, labels, rng, class_num, name):
    """Apply one of `choices` [(op, weight)] with probability `prob` (weights renormalized)."""
    if rng.random() < prob:
        weights = np.array([w for _, w in choices], dtype=np.float64)
        op = choices[int(rng.choice(len(choices), p=weights / weights.sum()))][0]
        return op(images, labels, rng)
    return images, soft_labels(labels, _class_num(name, class_num))


@BATCH_TRANSFORMS.register()
class OpSampler:
    """PaddleClas' OpSampler: `{OpSampler: {Mixup: {alpha: 0.8, prob: 0.5}, Cutmix: {alpha: 1.0,
    prob: 0.5}}}`. Each op's prob is its chance per batch; if they sum below 1 the remainder
    passes the batch through (one-hot labels). class_num may be given at the top level.
    Registered as `OpSampler` and (PLSC's name) `TransformOpSampler`."""

    def __init__(self, class_num: Optional[int] = None, **ops):
        me = type(self).__name__
        if not ops:
            raise ConfigError(f"{me}: give at least one batch transform, e.g. "
                              "{Mixup: {alpha: 0.8, prob: 0.5}}")
        self.class_num = class_num
        self.choices = []
        for name, kwargs in ops.items():
            kwargs = dict(kwargs or {})
            p = _check_prob(f"{me}.{name}", "prob", kwargs.pop("prob", 1.0 / len(ops)))
            if name in SAMPLER_NAMES:
                raise ConfigError(f"{me}.{name}: only single transforms can be sampled")
            kwargs.setdefault("class_num", class_num)
            self.choices.append((BATCH_TRANSFORMS.build({"name": name, **kwargs},
                                                        f"{me}.{name}"), p))
        total = sum(p for _, p in self.choices)
        if total > 1 + 1e-6:
            raise ConfigError(f"{me}: the probs sum to {total:g}, more than 1")
        self.prob = min(total, 1.0)
        if class_num is None:  # PLSC gives class_num per op only: the pass-through needs it too
            self.class_num = next((op.class_num for op, _ in self.choices if op.class_num), None)

    def set_class_num(self, class_num):
        for op, _ in self.choices:
            op.set_class_num(class_num)
        if self.class_num is None:
            self.class_num = class_num

    def __call__(self, images, labels, rng):
        if self.prob == 0:
            return images, soft_labels(labels, _class_num(type(self).__name__, self.class_num))
        return _choose(self.choices, self.prob, images, labels, rng, self.class_num,
                       type(self).__name__)


@BATCH_TRANSFORMS.register()
class TransformOpSampler(OpSampler):
    """PLSC's name for OpSampler (its DeiT configs); errors then say TransformOpSampler."""


SAMPLER_NAMES = ("OpSampler", "TransformOpSampler", "MixupCutmix")


# PaddleClas names of the same operators.
BATCH_TRANSFORMS.register("MixupOperator")(Mixup)
BATCH_TRANSFORMS.register("CutmixOperator")(Cutmix)


def create_batch_transform(list_cfg, class_num=None):
    """[{Name: {kwargs}}, ...] -> one callable (None for an empty list); several run in order."""
    if not list_cfg:
        return None
    ops = [op for _, op in BATCH_TRANSFORMS.build_list(list_cfg, "batch_transform_ops")]
    for op in ops:
        if class_num is not None and hasattr(op, "set_class_num"):
            op.set_class_num(class_num)
    if len(ops) == 1:
        return ops[0]
    return Compose(ops)


class Compose:
    def __init__(self, ops):
        self.ops = ops

    def __call__(self, images, labels, rng):
        for op in self.ops:
            images, labels = op(images, labels, rng)
        return images, labels

