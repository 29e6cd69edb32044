"""Exact evaluation: per-rank sums over the rank's shard (the eval sampler pads nothing), one
all-reduce, one division. Used inside training and by `evaluate(cfg)`."""
import time

import paddle

from . import distributed
from .build import build_evaluation


@paddle.no_grad()
def run_evaluation(model, parts, precision, world, logger, epoch=None, label="Avg"):
    """{metric: value} over the whole eval set; leaves the model in the mode it found it.
    `label` names the weights in the log line: [Avg] (the model's own), [EMA]."""
    was_training = model.training
    model.eval()
    sums, count = {}, 0
    tic = time.time()
    for images, labels in parts.data:  # DataPipeline: re-raises worker errors
        with precision.autocast():
            logits = model(images)
        logits = logits.astype("float32")
        n = images.shape[0]
        count += n
        if parts.loss is not None:
            sums["loss"] = sums.get("loss", 0.0) + float(parts.loss(logits, labels)["loss"]) * n
        if parts.metric is not None:
            for k, v in parts.metric(logits, labels).items():
                sums[k] = sums.get(k, 0.0) + float(v)
    keys = sorted(sums)
    totals = distributed.all_reduce_sum([count] + [sums[k] for k in keys], world)
    n_total = int(round(totals[0]))
    result = {k: v / max(n_total, 1) for k, v in zip(keys, totals[1:])}
    if was_training:
        model.train()
    tag = f"[Eval][Epoch {epoch}]" if epoch is not None else "[Eval]"
    body = ", ".join(f"{k}: {v:.5f}" for k, v in result.items())
    logger.info(f"{tag}[{label}]{body} ({n_total} images, {time.time() - tic:.1f}s)")
    return result


def evaluate(cfg):
    """Evaluate Global.pretrained_model on DataLoader.Eval; returns {metric: value}."""
    ctx, model, parts, precision = build_evaluation(cfg)
    return run_evaluation(model, parts, precision, ctx.world, ctx.logger)
