"""Metrics for the `Metric.Train` / `Metric.Eval` config lists.

A metric returns COUNTS, not ratios: `{'top1': 37.0, 'top5': 60.0}` is the number of correct
samples in the batch, as 0-d float32 tensors left on the device (training sums them there and
reads them on the host only when it logs; a python float works too). The engine sums counts
over batches and ranks and divides once by the exact number of samples, so uneven last batches and the distributed sampler's padding (dropped
by the engine) cannot skew the average.
"""
from typing import Annotated, List

import paddle

from .config import Rule, ge
from .loss import split_labels
from .registry import METRICS


def hard_labels(logits, labels):
    """int64 [B] class ids; soft / multi-hot labels give their argmax (for multi-hot: the first
    positive class)."""
    hard, soft = split_labels(logits, labels)
    return hard if hard is not None else paddle.argmax(soft, axis=-1)


@METRICS.register()
class TopkAcc:
    """Count of samples whose label is among the k highest logits, for each k in `topk`
    (keys `top{k}`). A k larger than the number of classes counts every sample."""

    def __init__(self, topk: Annotated[List[Annotated[int, ge(1)]],
                                       Rule("(at least one)", bool)] = (1, 5)):
        self.topk = sorted(set(topk))

    @paddle.no_grad()
    def __call__(self, logits, labels):
        label = hard_labels(logits, labels)
        batch, num_classes = logits.shape[0], logits.shape[-1]
        if batch == 0:
            return {f"top{k}": 0.0 for k in self.topk}
        kmax = min(self.topk[-1], num_classes)
        _, idx = paddle.topk(logits, k=kmax, axis=-1)
        # a label occurs at most once in a row of idx, so the running sum along k is 0/1:
        # "label within the first k"
        hits = (idx == label.unsqueeze(-1)).astype("float32").cumsum(axis=-1).sum(axis=0)
        return {f"top{k}": hits[min(k, num_classes) - 1] for k in self.topk}


class CombinedMetric:
    def __init__(self, metrics):
        self.metrics = metrics

    def __call__(self, logits, labels):
        out = {}
        for m in self.metrics:
            out.update(m(logits, labels))
        return out


def build_metrics(list_cfg, section="Metric"):
    """fn(logits, labels) -> {name: correct count} from `[{TopkAcc: {topk: [1, 5]}}, ...]`.

    None or [] gives a function returning {} (a section without metrics).
    """
    metrics = [m for _, m in METRICS.build_list(list_cfg, section)]
    return CombinedMetric(metrics)
