"""Losses for the `Loss.Train` / `Loss.Eval` config lists.

`build_loss([{Name: {weight: w, ...}}, ...])` returns `fn(logits, labels) -> dict`:
`{'loss': sum of weighted terms, 'Name': weight * Name's value, ...}` (PLSC's CombinedLoss: each
logged term is already weighted, so the terms add up to 'loss').

Labels: int [B] or [B, 1] are hard class ids; float [B, C] are soft targets (mixup/cutmix) or
multi-hot vectors (multi-label). Losses are computed in float32 whatever the logits' dtype,
because softmax/log-sum-exp in fp16 loses too much.
"""
from typing import Annotated, Literal, Optional

import paddle
import paddle.nn.functional as F

from .config import between, ge
from .errors import ConfigError
from .registry import LOSSES

Weight = Annotated[float, ge(0)]
Epsilon = Optional[Annotated[float, between(0, 1, hi_open=True)]]  # null or 0: no smoothing


def split_labels(logits, labels):
    """(hard int64 [B] or None, soft float32 [B, C] or None): exactly one is not None."""
    num_classes = logits.shape[-1]
    shape = list(labels.shape)
    if len(shape) == 2 and shape[-1] == num_classes and num_classes != 1:
        return None, labels.astype("float32")
    if len(shape) == 1 or (len(shape) == 2 and shape[-1] == 1):
        return labels.reshape([-1]).astype("int64"), None
    raise ConfigError(
        f"labels of shape {shape} do not fit logits of shape {list(logits.shape)}: expected "
        f"[B], [B, 1] or [B, {num_classes}] (does Model.class_num match the dataset?)")


def _one_hot(hard, num_classes):
    return F.one_hot(hard, num_classes).astype("float32")


@LOSSES.register()
class CELoss:
    """Softmax cross entropy, mean over the batch, with optional label smoothing:

        target = (1 - epsilon) * y + epsilon / C,   loss = -sum_c target_c * log_softmax(x)_c

    y is the one-hot hard label or the given soft target (smoothing applies to both).
    epsilon null or 0: no smoothing.
    """

    def __init__(self, weight: Weight = 1.0, epsilon: Epsilon = None):
        self.weight = weight
        self.epsilon = epsilon or 0.0

    def __call__(self, logits, labels):
        x = logits.astype("float32")
        hard, soft = split_labels(x, labels)
        eps = self.epsilon
        if hard is not None and eps == 0.0:
            return F.cross_entropy(x, hard, reduction="mean")
        logp = F.log_softmax(x, axis=-1)
        if hard is not None:
            # one-hot smoothing without materialising the [B, C] one-hot matrix
            nll = -paddle.take_along_axis(logp, hard.unsqueeze(-1), axis=-1).squeeze(-1)
            per_sample = (1.0 - eps) * nll - eps * logp.mean(axis=-1)
        else:
            target = soft * (1.0 - eps) + eps / x.shape[-1] if eps else soft
            per_sample = -(target * logp).sum(axis=-1)
        return per_sample.mean()


@LOSSES.register()
class ViTCELoss:
    """PLSC's ViT loss. With y the one-hot / soft / multi-hot label and ViT-style smoothing

        target = y * (1 - epsilon) + epsilon      (positives stay 1, negatives become epsilon)

    type sigmoid: binary cross entropy with logits, SUMMED over classes, mean over the batch.
    type softmax: -sum_c target_c * log_softmax(x)_c, mean over the batch; as in PLSC the
                  smoothed target is NOT renormalised (it sums to 1 + (C - 1) * epsilon).
    epsilon null or 0: no smoothing (PLSC's default; the published pre-training configs set
    1e-4 explicitly and the fine-tuning configs leave it out).
    """

    def __init__(self, weight: Weight = 1.0, epsilon: Epsilon = None,
                 type: Literal["sigmoid", "softmax"] = "sigmoid"):  # noqa: A002 (PLSC's key)
        self.weight = weight
        self.epsilon = epsilon or 0.0
        self.type = type

    def __call__(self, logits, labels):
        x = logits.astype("float32")
        hard, soft = split_labels(x, labels)
        target = _one_hot(hard, x.shape[-1]) if hard is not None else soft
        if self.epsilon:
            target = target * (1.0 - self.epsilon) + self.epsilon
        if self.type == "sigmoid":
            per_sample = F.binary_cross_entropy_with_logits(x, target, reduction="none")
            per_sample = per_sample.sum(axis=-1)
        else:
            per_sample = -(target * F.log_softmax(x, axis=-1)).sum(axis=-1)
        return per_sample.mean()


@LOSSES.register()
class SoftTargetCELoss:
    """-(target * log_softmax(x)).sum(-1).mean() for soft targets (hard labels act one-hot)."""

    def __init__(self, weight: Weight = 1.0):
        self.weight = weight

    def __call__(self, logits, labels):
        x = logits.astype("float32")
        hard, soft = split_labels(x, labels)
        if hard is not None:
            return F.cross_entropy(x, hard, reduction="mean")
        return -(soft * F.log_softmax(x, axis=-1)).sum(axis=-1).mean()


class CombinedLoss:
    """Weighted sum of the configured losses; see the module docstring for the returned dict."""

    def __init__(self, terms):
        self.terms = terms  # [(key, loss object with .weight)]

    def __call__(self, logits, labels):
        out = {}
        for key, fn in self.terms:
            out[key] = fn(logits, labels) * fn.weight
        out["loss"] = paddle.add_n(list(out.values())) if len(out) > 1 else next(iter(out.values()))
        return out


def build_loss(list_cfg, section="Loss"):
    """CombinedLoss from `[{Name: {weight: 1.0, ...}}, ...]` (`{Name: null}` = all defaults).

    `section` (e.g. "Loss.Train") only names the config key in error messages. A loss listed
    twice is logged as Name, Name_1, ...
    """
    if not list_cfg:
        raise ConfigError(f"{section} must be a non-empty list of {{LossName: {{weight: ...}}}},"
                          f" got {list_cfg!r}")
    terms, seen = [], {}
    for name, fn in LOSSES.build_list(list_cfg, section):
        n = seen.get(name, 0)
        seen[name] = n + 1
        terms.append((name if n == 0 else f"{name}_{n}", fn))
    return CombinedLoss(terms)
