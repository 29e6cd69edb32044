"""The training loop: run (epochs, end-of-epoch evaluation and checkpoints) -> run_epoch (one
pass over the sampler, resumable mid-epoch) -> run_iter (one micro-batch). Precision,
accumulation, clipping and skipping belong to the OptimWrapper; what a checkpoint holds to
checkpoint.py; the weight EMA to ema.py; the loop decides only when things happen and what is
logged.

Losses and metric counts stay on the device between log lines (summed there in float64, the
arithmetic of the python sums they replace): the host reads them once per [Train] line, so a
step that logs nothing costs no host read beyond the OptimWrapper's one."""
import os
import time
from dataclasses import dataclass, field

import numpy as np
import paddle

from ..errors import TrainingError
from ..optim.lr import warmup_warning
from . import checkpoint, distributed, run_dir
from . import ema as ema_lib
from .build import build_trainer
from .evaluator import run_evaluation
from .logger import Meter, format_eta, setup_logger


@dataclass
class Window:
    """What the next [Train] log line reports (reset after each line)."""
    loss_sum: object = 0.0  # device float64 sum of the counted steps' losses (0.0 before one)
    loss_steps: int = 0
    batch_cost: Meter = field(default_factory=Meter)
    reader_cost: Meter = field(default_factory=Meter)
    metric_sums: dict = field(default_factory=dict)  # name -> device float64 sum of counts
    metric_count: int = 0
    images: int = 0  # images this rank trained on, partial batches counted as they are


@dataclass
class Progress:
    window: Window = field(default_factory=Window)
    images: int = 0  # images this rank trained on since this process started


def run_iter(t, images, labels, micro=0):
    """Forward and backward of one micro-batch (the optimizer steps after the last one of an
    accumulation). Returns (StepResult or None, train metrics of the batch, images in it)."""
    data = t.train_data
    if data.batch_transform is not None:
        rng = np.random.default_rng([t.seed, t.state.epoch, micro, t.ctx.world.rank])
        images, labels = data.batch_transform(images, labels, rng)
    with t.optim.micro_context():
        with t.optim.autocast():
            logits = t.dp_model(images)
        logits = logits.astype("float32")
        loss = t.train_loss(logits, labels)["loss"]
        result = t.optim.update(loss)
    metrics = t.train_metric(logits.detach(), labels) if t.train_metric is not None else {}
    return result, metrics, int(images.shape[0])


def run_epoch(t, progress=None):
    """Runs (the rest of) epoch t.state.epoch; returns True when max_train_step was reached."""
    s, data, accum = t.state, t.train_data, t.optim.accum_steps
    n_micro = t.steps_per_epoch * accum
    data.sampler.set_epoch(s.epoch)
    data.sampler.set_start_iter(s.micro_in_epoch)
    t.model.train()
    progress = progress if progress is not None else Progress()
    micro, tic = s.micro_in_epoch, time.time()
    for images, labels in data:  # DataPipeline: re-raises worker errors
        if micro >= n_micro:
            break
        window = progress.window
        window.reader_cost.update(time.time() - tic)
        if micro % accum == 0:
            step_start = tic  # an optimizer step's cost includes all its micro-batches
        result, metrics, n = run_iter(t, images, labels, micro)
        for k, v in metrics.items():
            window.metric_sums[k] = _add(window.metric_sums.get(k, 0.0), v)
        window.metric_count += n
        window.images += n
        progress.images += n
        micro += 1
        if result is not None:
            s.micro_in_epoch = micro
            window.batch_cost.update(time.time() - step_start)
            if _after_step(t, result, progress, micro // accum):
                return True
        tic = time.time()
    return False


def _add(total, value):
    """total + value, on the device in float64 when value is a tensor (no host read)."""
    if isinstance(value, paddle.Tensor):
        value = value.astype("float64")
    return total + value


def _window_means(window):
    """(mean loss per counted step, {metric: mean per image}): ONE host read for all of them."""
    keys = sorted(window.metric_sums)
    sums = [window.loss_sum] + [window.metric_sums[k] for k in keys]
    if any(isinstance(v, paddle.Tensor) for v in sums):
        sums = paddle.stack([v.reshape([]) if isinstance(v, paddle.Tensor)
                             else paddle.full([], v, "float64") for v in sums]).numpy()
    loss = float(sums[0]) / max(window.loss_steps, 1)
    return loss, {k: float(v) / max(window.metric_count, 1) for k, v in zip(keys, sums[1:])}


def _check_step(t, result):
    """Counts the step or the skip; raises after Global.max_nan_steps skips in a row."""
    s, g, log = t.state, t.cfg.Global, t.logger
    if result.status == "nonfinite":
        s.nan_steps += 1
        # the skip is agreed over ranks: this rank's loss may be finite when another's was not
        log.warning(f"step {s.global_step + 1}: loss or gradients not finite on some rank "
                    f"(this rank's loss {float(result.loss)}): update skipped "
                    f"({s.nan_steps}/{g.max_nan_steps})")
        if s.nan_steps >= g.max_nan_steps:
            raise TrainingError(
                f"loss was NaN/inf for {s.nan_steps} consecutive steps (Global.max_nan_steps) at "
                f"epoch {s.epoch + 1}, step {s.global_step + 1}; stopped. The last good "
                f"checkpoint is {os.path.join(t.ctx.out_dir, 'latest')} if one was saved")
        return False
    s.nan_steps = 0
    if result.status == "overflow":
        log.warning(f"step {s.global_step + 1}: inf/nan gradients, update skipped, loss scale "
                    f"{result.scale:g} -> {result.new_scale:g}")
    s.global_step += 1
    return True


def _after_step(t, result, progress, step_in_epoch):
    """Logging, step-unit evaluation and the step limit; True when training must stop."""
    s, g, window = t.state, t.cfg.Global, progress.window
    if _check_step(t, result):
        window.loss_sum = _add(window.loss_sum, result.loss)
        window.loss_steps += 1
    if result.status == "ok" and t.ema is not None:  # skipped steps left the weights as they were
        ema_lib.update(t.ema, t.model, t.optim.optimizer)
    if s.global_step % g.print_batch_step == 0 or step_in_epoch == t.steps_per_epoch:
        _log_step(t, result.lr, window, step_in_epoch)
        progress.window = Window()
    if _eval_due(t, "step", s.global_step):
        _evaluate(t, s.epoch + 1)
    if g.max_train_step and s.global_step >= g.max_train_step:
        t.logger.info(f"reached Global.max_train_step={g.max_train_step}")
        return True
    return False


def _eval_due(t, unit, count):
    g = t.cfg.Global
    return (t.eval is not None and g.eval_during_train and g.eval_unit == unit
            and count % g.eval_interval == 0)


def _evaluate(t, epoch):
    """Evaluate the weights, and the EMA weights when EMA.ema_eval says so (logged [EMA])."""
    args = (t.eval, t.optim.precision, t.ctx.world, t.logger, epoch)
    result, ema_result = run_evaluation(t.model, *args), None
    if t.ema is not None and ema_lib.eval_due(t.cfg.EMA, epoch):
        with ema_lib.applied(t.ema, t.model):
            ema_result = run_evaluation(t.model, *args, label="EMA")
    _after_eval(t, result, ema_result, epoch)


def _best_by_ema(t):
    """Whether best_model is chosen by the EMA weights' top1 (EMA.best_model: ema)."""
    return t.ema is not None and t.cfg.EMA.best_model == "ema"


def _after_eval(t, result, ema_result, epoch):
    s = t.state
    ema_result = ema_result or {}
    s.last_top1, s.last_ema_top1 = result.get("top1"), ema_result.get("top1")
    s.last_eval_step = s.global_step
    for prefix, values in (("eval", result), ("eval_ema", ema_result)):
        for k, v in values.items():
            t.ctx.scalars.add(f"{prefix}/{k}", v, s.global_step)
    top1 = s.last_ema_top1 if _best_by_ema(t) else s.last_top1
    if top1 is None:
        return
    if s.best_top1 is None or top1 > s.best_top1:
        s.best_top1, s.best_epoch = top1, epoch
        checkpoint.save(t, "best_model")
    what = "EMA top1" if _best_by_ema(t) else "top1"
    t.logger.info(f"[Eval][Epoch {epoch}][best {what}: {s.best_top1:.5f} (epoch {s.best_epoch})]")


def _log_step(t, lr, window, step_in_epoch):
    g, s, world = t.cfg.Global, t.state, t.ctx.world
    _injected_fault(s.global_step, world.rank)
    cost = window.batch_cost.avg
    # images that exist (a partial last batch counts as what it holds), over all ranks
    ips = window.images * world.size / max(window.batch_cost.total, 1e-9)
    eta = (t.total_steps - s.global_step) * cost
    loss, avg = _window_means(window)
    metrics = "".join(f", {k}: {v:.5f}" for k, v in avg.items())
    t.logger.info(
        f"[Train][Epoch {s.epoch + 1}/{g.epochs}][Iter: {step_in_epoch}/{t.steps_per_epoch}]"
        f"lr: {lr:.6g}, loss: {loss:.5f}{metrics}, batch_cost: {cost:.4f}s, "
        f"reader_cost: {window.reader_cost.avg:.5f}s, ips: {ips:.2f} images/sec, "
        f"eta: {format_eta(eta)}")
    scalars = {"train/loss": loss, "train/lr": lr, "train/ips": ips,
               **{f"train/{k}": v for k, v in avg.items()}}
    for tag, value in scalars.items():
        t.ctx.scalars.add(tag, value, s.global_step)


def _injected_fault(step, rank):
    """Test-only seam: PLSC_TEST_FAIL_AT="rank:step" raises inside that rank's training step, so
    tests can check that one failing rank brings the whole job down (tests/test_failures.py)."""
    spec = os.environ.get("PLSC_TEST_FAIL_AT")
    if spec and spec == f"{rank}:{step}":
        raise RuntimeError(f"injected failure at step {step} (PLSC_TEST_FAIL_AT)")


def _save_epoch(t):
    g, s = t.cfg.Global, t.state
    checkpoint.save(t, "latest")
    keep = g.max_num_latest_checkpoint
    if keep != 0 and s.epoch % g.save_interval == 0:
        checkpoint.save(t, f"epoch_{s.epoch}")
        if keep > 0 and t.ctx.world.is_main:
            for old in checkpoint.epoch_checkpoints(t.ctx.out_dir)[:-keep]:
                checkpoint.remove(old)


def run(t):
    """Train to Global.epochs (or max_train_step); returns a summary dict."""
    g, s, log = t.cfg.Global, t.state, t.logger
    bs, world, accum = t.train_data.sampler.batch_size, t.ctx.world.size, t.optim.accum_steps
    per_device = f"{bs * accum} per device" + (f" in {accum} micro-batches of {bs}"
                                               if accum > 1 else "")
    log.info(f"training {g.epochs} epochs x {t.steps_per_epoch} steps, global batch "
             f"{bs * world * accum} ({per_device}, {world} device(s)), "
             f"{t.total_steps} steps in all")
    if warmup_warning(t.lr_scheduler):
        log.warning(warmup_warning(t.lr_scheduler))
    progress, t_start = Progress(), time.time()
    stopped = False
    while s.epoch < g.epochs and not stopped:
        stopped = run_epoch(t, progress)
        complete = s.micro_in_epoch >= t.steps_per_epoch * accum
        if complete:
            s.epoch, s.micro_in_epoch = s.epoch + 1, 0
        if not (complete or stopped):
            continue
        # the weights training ends with (Global.epochs reached) are always evaluated, once, so
        # the summary can name their top1. A Global.max_train_step stop is not evaluated
        # specially: it may be resumed, and the resumed run must equal an uninterrupted one.
        final = complete and s.epoch >= g.epochs
        if (complete and _eval_due(t, "epoch", s.epoch)) or (final and _final_eval_missing(t)):
            _evaluate(t, s.epoch if complete else s.epoch + 1)
        if complete:
            _save_epoch(t)
        else:
            checkpoint.save(t, "latest")
    return _finish(t, progress, time.time() - t_start)


def _final_eval_missing(t):
    """True when the final weights have not been evaluated (and evaluation is on)."""
    return (t.eval is not None and t.cfg.Global.eval_during_train
            and t.state.last_eval_step != t.state.global_step)


def _finish(t, progress, elapsed):
    """Log the final summary line; returns the summary dict."""
    s, world = t.state, t.ctx.world.size
    ips = progress.images * world / max(elapsed, 1e-9)
    best = "no evaluation"
    final_now = s.last_eval_step == s.global_step
    if s.best_top1 is not None:
        final = ""
        if s.last_top1 is not None and final_now:
            done = s.epoch if s.micro_in_epoch == 0 else s.epoch + 1
            ema = "" if s.last_ema_top1 is None else f", EMA weights top1 {s.last_ema_top1:.5f}"
            final = f"final weights (epoch {done}): top1 {s.last_top1:.5f}{ema}; "
        weights = "" if t.ema is None else ("EMA" if _best_by_ema(t) else "raw") + " weights, "
        path = os.path.join(t.ctx.out_dir, "best_model") + (".pdema" if _best_by_ema(t) else "")
        best = f"{final}best ({weights}epoch {s.best_epoch}): top1 {s.best_top1:.5f} -> {path}"
    t.logger.info(f"[Train] finished: {s.global_step} steps, {s.epoch} epoch(s) in "
                  f"{format_eta(elapsed)} ({ips:.1f} images/sec); {best}; checkpoints in "
                  f"{t.ctx.out_dir}")
    t.ctx.scalars.close()
    return {"best_top1": s.best_top1, "best_epoch": s.best_epoch, "global_step": s.global_step,
            "epoch": s.epoch, "images": progress.images * world, "ips": ips,
            "final_top1": s.last_top1 if final_now else None,
            "final_ema_top1": s.last_ema_top1 if final_now else None,
            "best_weights": "ema" if _best_by_ema(t) else "raw"}


def train(cfg):
    """Decide fresh/resume/complete for the output directory (run_dir.py), build a Trainer,
    record the config once building succeeded, train it, return the summary."""
    decision = run_dir.decide(cfg)
    if decision.action == "complete":
        setup_logger(None, is_main=distributed.launched_rank() == 0).info(decision.message)
        return {"complete": True}
    cfg.Global.checkpoint = decision.checkpoint or cfg.Global.checkpoint
    t = build_trainer(cfg)  # records the config and opens train.log once built
    t.logger.info(decision.message)
    return run(t)
