"""Components from the validated config. Evaluation builds the model and the eval parts only;
training adds data, loss, schedule, optimizer and the optim wrapper, and restores a checkpoint.
"""
import dataclasses
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from ..data import build_dataloader
from ..errors import ConfigError
from ..loss import build_loss
from ..metric import build_metrics
from ..models import build_model as build_registered_model
from ..optim import build_lr_scheduler, build_optimizer
from ..optim.lr import scaled_learning_rate
from . import amp as amp_lib
from . import checkpoint, sharding
from . import ema as ema_lib
from .context import RunContext, commit_run, setup_run
from .optim_wrapper import OptimWrapper


@dataclass
class EvalParts:
    data: Any
    loss: Any  # None: no Loss.Eval
    metric: Any  # None: no Metric.Eval


@dataclass
class TrainState:
    """Where the run is: `epoch` epochs complete, `micro_in_epoch` micro-batches of the next."""
    epoch: int = 0
    micro_in_epoch: int = 0
    global_step: int = 0
    best_top1: Optional[float] = None  # None until an evaluation reports top1
    best_epoch: Optional[int] = None
    last_top1: Optional[float] = None  # of the last evaluation in this process
    last_eval_step: Optional[int] = None  # global_step of that evaluation
    last_ema_top1: Optional[float] = None  # of the EMA weights in that evaluation
    nan_steps: int = 0  # consecutive non-finite steps


@dataclass
class Trainer:
    ctx: RunContext
    model: Any
    dp_model: Any  # the model as called in training (paddle.DataParallel on several ranks)
    train_data: Any
    train_loss: Any
    train_metric: Any
    eval: Optional[EvalParts]  # None: no evaluation during training
    lr_scheduler: Any
    optim: OptimWrapper
    steps_per_epoch: int
    total_steps: int
    state: TrainState = dataclasses.field(default_factory=TrainState)
    ema: Any = None  # ema.Ema when EMA is on (EMA.decay set)

    # What tests and tools inspect, named as in the logs.
    cfg = property(lambda self: self.ctx.cfg)
    logger = property(lambda self: self.ctx.logger)
    seed = property(lambda self: self.ctx.seed)
    epoch = property(lambda self: self.state.epoch)
    global_step = property(lambda self: self.state.global_step)
    best_top1 = property(lambda self: self.state.best_top1)
    best_epoch = property(lambda self: self.state.best_epoch)


def build_model(cfg, ctx):
    """The model, with pretrained weights and recompute as configured."""
    g = cfg.Global
    model = build_registered_model(dict(cfg.Model))
    n_params = sum(int(np.prod(p.shape)) for p in model.parameters())
    ctx.logger.info(f"model {cfg.Model.name}: {n_params:,} parameters")
    if g.pretrained_model:
        from ..convert.pretrained import load_pretrained

        load_pretrained(model, g.pretrained_model, finetune=g.finetune,
                        pos_embed_interp=g.pos_embed_interp, log=ctx.logger.info,
                        source="Global.pretrained_model")
    recompute = cfg.DistributedStrategy.recompute
    if recompute:  # true, or PLSC's {layerlist_interval, names}
        form = recompute if isinstance(recompute, dict) else {}
        try:
            model.set_grad_checkpointing(True, form.get("layerlist_interval", 1),
                                         form.get("names", ()))
        except ConfigError as e:
            raise ConfigError(f"DistributedStrategy.recompute.names: {e}") from None
    return to_static_model(cfg, model, ctx.logger)


def to_static_model(cfg, model, logger):
    """Global.to_static (PaddleClas' key): run the model's forward, in training and evaluation,
    as a static graph (paddle.jit.to_static converts the Layer's forward in place; parameters,
    state dict and optimizer stay the dygraph ones). Off by default: on CPU the dygraph step with
    plsc's CPU kernels (plsc/models/layers.py) measured faster; see tools/benchmark.py train
    --to-static."""
    if not cfg.Global.to_static:
        return model
    if cfg.DistributedStrategy.recompute:
        raise ConfigError("Global.to_static=True does not combine with "
                          "DistributedStrategy.recompute: turn one of them off")
    import paddle

    logger.info("Global.to_static: the model's forward runs as a static graph")
    return paddle.jit.to_static(model, full_graph=True)


def build_eval_parts(cfg, ctx):
    """EvalParts, or None without DataLoader.Eval."""
    loaders = cfg.get("DataLoader") or {}
    if not loaders.get("Eval"):
        return None
    losses, metrics = cfg.get("Loss") or {}, cfg.get("Metric") or {}
    data = build_dataloader(loaders["Eval"], "eval", ctx.world.rank, ctx.world.size, ctx.seed,
                            class_num=cfg.Model.get("class_num"))
    return EvalParts(data, build_loss(losses["Eval"]) if losses.get("Eval") else None,
                     build_metrics(metrics["Eval"]) if metrics.get("Eval") else None)


def _train_parts(cfg, ctx):
    loaders = cfg.get("DataLoader") or {}
    losses, metrics = cfg.get("Loss") or {}, cfg.get("Metric") or {}
    if not loaders.get("Train"):
        raise ConfigError("DataLoader.Train is required for training")
    if not losses.get("Train"):
        raise ConfigError("Loss.Train is required for training")
    data = build_dataloader(loaders["Train"], "train", ctx.world.rank, ctx.world.size, ctx.seed,
                            class_num=cfg.Model.get("class_num"),
                            accum_steps=cfg.Global.accum_steps)
    metric = build_metrics(metrics["Train"]) if metrics.get("Train") else None
    return data, build_loss(losses["Train"]), metric


def _steps_per_epoch(cfg, ctx, data):
    accum = cfg.Global.accum_steps
    micro = len(data.sampler)
    if micro // accum == 0:
        bs = cfg.DataLoader.Train["sampler"].get("batch_size")
        raise ConfigError(
            f"DataLoader.Train: {len(data.dataset)} samples make {micro} micro-batch(es) "
            f"of {bs // accum} per device on {ctx.world.size} device(s); accum_steps={accum} "
            "needs at least that many: lower the batch size or accum_steps")
    return micro // accum


def _adopt_checkpoint_run(cfg, ctx, states, prefix):
    """Checks that the checkpoint can continue this config; the run takes over its seed (the
    data order depends on it, so it must be known before the loaders are built)."""
    if states["accum_steps"] != cfg.Global.accum_steps:
        raise ConfigError(f"Global.accum_steps={cfg.Global.accum_steps} but {prefix} was written "
                          f"with {states['accum_steps']}: resume with the same value")
    if states["seed"] != ctx.seed:
        ctx.logger.warning(f"resuming with seed {states['seed']} from the checkpoint "
                           f"(config says {ctx.seed})")
        ctx = dataclasses.replace(ctx, seed=states["seed"])
    return ctx


def _optim_wrapper(cfg, ctx, model, lr_scheduler, accum, plan):
    """The optimizer wrapper, with the model wrapped for data parallelism or for ZeRO sharding
    by `plan` (sharding.plan)."""
    use_o2 = cfg.FP16.level == "O2" and amp_lib.gpu_available()
    optimizer, clip = build_optimizer(dict(cfg.Optimizer), lr_scheduler, model,
                                      multi_precision=use_o2)
    model, optimizer, precision = amp_lib.setup(cfg.FP16, model, optimizer, ctx.logger)
    dp_model, optimizer, precision.scaler = sharding.wrap(plan, model, optimizer,
                                                          precision.scaler, ctx.world)
    if plan is not None:
        ctx.logger.info(sharding.describe(plan, optimizer))
    # stages 2 and 3: each rank holds only its share of the gradients
    clip = sharding.step_clip(plan, clip, dp_model, optimizer, precision.scaler, ctx.world)
    params = [p for p in model.parameters() if not p.stop_gradient]
    wrapper = OptimWrapper(optimizer, lr_scheduler, precision, params, clip, accum, ctx.world,
                           dp_model)
    return model, dp_model, wrapper


def build_trainer(cfg):
    """A Trainer ready to run: set up, built, and resumed from Global.checkpoint if given."""
    ctx = setup_run(cfg, "train")
    g = cfg.Global
    loaded = prefix = None
    if g.checkpoint:
        prefix = checkpoint.resume_prefix(g.checkpoint, log=ctx.logger.warning)
        loaded = checkpoint.read_set(prefix)
        ctx = _adopt_checkpoint_run(cfg, ctx, loaded[2], g.checkpoint)
    # checked before anything is built: a setting that cannot run here fails at once
    plan = sharding.plan(cfg.DistributedStrategy.sharding, ctx.world, ctx.device, cfg.FP16,
                         ctx.logger.info)
    model = build_model(cfg, ctx)
    eval_parts = build_eval_parts(cfg, ctx) if g.eval_during_train else None
    data, loss, metric = _train_parts(cfg, ctx)
    steps_per_epoch = _steps_per_epoch(cfg, ctx, data)
    total_steps = g.epochs * steps_per_epoch
    if g.max_train_step:
        total_steps = min(total_steps, g.max_train_step)
    global_batch = cfg.DataLoader.Train.sampler.batch_size * ctx.world.size
    lr_cfg, effective = scaled_learning_rate(dict(cfg.LRScheduler), global_batch)
    if effective:
        ctx.logger.info(effective)
    lr_scheduler = build_lr_scheduler(lr_cfg, g.epochs, steps_per_epoch)
    model, dp_model, wrapper = _optim_wrapper(cfg, ctx, model, lr_scheduler, g.accum_steps,
                                               plan)
    t = Trainer(ctx, model, dp_model, data, loss, metric, eval_parts, lr_scheduler, wrapper,
                steps_per_epoch, total_steps)
    _restore(t, loaded, prefix)
    commit_run(t.ctx, "train")  # built: only now the output directory gets files
    return t


def _restore(t, loaded, prefix):
    """Resume `t` from the set read at `prefix` (if any); the EMA starts from the weights the
    run continues with, then takes the set's EMA weights."""
    g, ctx = t.cfg.Global, t.ctx
    if loaded is not None:
        checkpoint.restore(t, loaded, f"Global.checkpoint {g.checkpoint}")
    t.ema = ema_lib.build(t.cfg.EMA, t.model, t.optim.optimizer)
    if t.ema is not None:
        ctx.logger.info(f"EMA of the weights: decay {t.ema.decay:g}"
                        + (" (min(decay, (1+n)/(10+n)) after n updates)" if t.ema.thres_steps else ""))
    if loaded is not None:
        checkpoint.restore_ema(t, checkpoint.read_ema(prefix, loaded[2]), loaded[2],
                               f"Global.checkpoint {g.checkpoint}")
        best = "no evaluation yet" if t.best_top1 is None else f"best top1 {t.best_top1:.4f}"
        ctx.logger.info(f"resumed from {g.checkpoint}: epoch {t.epoch}, step {t.global_step}, "
                        f"{best}")


def build_evaluation(cfg):
    """(context, model, EvalParts, precision) for a standalone evaluation: no training parts."""
    ctx = setup_run(cfg, "eval")
    model = build_model(cfg, ctx)
    parts = build_eval_parts(cfg, ctx)
    if parts is None:
        raise ConfigError("DataLoader.Eval is required for evaluation")
    commit_run(ctx, "eval")  # eval.log only: config.yaml and train.log stay the run's record
    return ctx, model, parts, amp_lib.for_eval(cfg.FP16)
