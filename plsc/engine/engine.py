"""The train/eval loop, driven only by the validated config.

One Engine per process. Under `paddle.distributed.launch` every rank runs the same code: the
model is wrapped in paddle.DataParallel (gradients averaged in backward), each rank reads its
own share of every global batch, and rank 0 alone logs and writes files.

Step structure (one optimizer step = accum_steps micro-batches):
    forward/backward each micro-batch (loss / accum_steps; DataParallel.no_sync on all but the
    last, so gradients are all-reduced once per optimizer step) -> unscale (fp16) -> one global
    grad-norm clip -> optimizer step (skipped on inf/nan) -> LR scheduler step.
"""
import contextlib
import math
import os
import random
import time

import numpy as np
import paddle

from .. import config as config_lib
from ..cpu import tune_cpu
from ..data import build_dataloader
from ..errors import ConfigError, TrainingError
from ..loss import build_loss
from ..metric import build_metrics
from ..models import build_model
from ..optim import build_lr_scheduler, build_optimizer
from . import amp as amp_lib
from . import checkpoint as ckpt
from . import distributed
from .logger import Meter, Scalars, format_eta, setup_logger


def _set_device(device, logger):
    if device == "gpu" and not amp_lib.gpu_available():
        logger.warning("Global.device=gpu but this Paddle build sees no GPU; running on cpu")
        device = "cpu"
    elif device == "xpu" and not paddle.is_compiled_with_xpu():
        logger.warning("Global.device=xpu but this Paddle build has no XPU support; running on cpu")
        device = "cpu"
    paddle.set_device(device)
    return device


def _seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed % 2**32)
    paddle.seed(seed)


def _rng_state():
    return {"python": random.getstate(), "numpy": np.random.get_state(),
            "paddle": paddle.get_rng_state()}


def _set_rng_state(state):
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    paddle.set_rng_state(state["paddle"])


class Engine:
    def __init__(self, cfg, mode="train"):
        if mode not in ("train", "eval"):
            raise ValueError(mode)
        self.cfg, self.mode = cfg, mode
        tune_cpu()
        g = cfg.Global
        self.world = distributed.init()
        self.out_dir = os.path.join(g.output_dir, cfg.Model.name)
        self.logger = setup_logger(os.path.join(self.out_dir, f"{mode}.log"), self.world.is_main)
        log = self.logger
        self.device = _set_device(g.device, log)
        if g.flags:
            paddle.set_flags(dict(g.flags))

        # One seed for the run (the sampler's shuffle must agree on every rank); each rank's
        # dropout/augmentation RNG is offset by its rank so ranks see different noise.
        seed = g.seed if g.seed is not None else int.from_bytes(os.urandom(4), "little") >> 1
        self.seed = distributed.broadcast_int(seed, self.world)
        _seed_everything(self.seed + self.world.rank)
        if self.world.is_main:
            os.makedirs(self.out_dir, exist_ok=True)
            with open(os.path.join(self.out_dir, "config.yaml"), "w") as f:
                f.write(config_lib.dump_config(cfg))
        log.info(f"plsc {mode}: {cfg.Model.name}, {self.world.size} process(es) on {self.device}, "
                 f"seed {self.seed}, output {self.out_dir}")

        self.model = build_model(dict(cfg.Model))
        n_params = sum(int(np.prod(p.shape)) for p in self.model.parameters())
        log.info(f"model {cfg.Model.name}: {n_params:,} parameters")
        if g.pretrained_model:
            from ..convert.pretrained import load_pretrained

            load_pretrained(self.model, g.pretrained_model, finetune=g.finetune,
                            pos_embed_interp=g.pos_embed_interp, log=log.info)
        if cfg.DistributedStrategy.recompute:
            self.model.grad_checkpointing = True
        if cfg.DistributedStrategy.get("sharding"):
            log.warning("DistributedStrategy.sharding is not implemented yet: training with plain "
                        "data parallelism (optimizer state replicated on every device)")

        loaders = cfg.get("DataLoader") or {}
        losses, metrics = cfg.get("Loss") or {}, cfg.get("Metric") or {}
        self.eval_data = None
        want_eval = mode == "eval" or g.eval_during_train
        if want_eval and loaders.get("Eval"):
            self.eval_data = build_dataloader(loaders["Eval"], "eval", self.world.rank,
                                              self.world.size, self.seed,
                                              class_num=cfg.Model.get("class_num"))
        self.eval_loss = build_loss(losses["Eval"]) if losses.get("Eval") else None
        self.eval_metric = build_metrics(metrics["Eval"]) if metrics.get("Eval") else None
        if mode == "eval":
            if self.eval_data is None:
                raise ConfigError("DataLoader.Eval is required for evaluation")
            self.amp = amp_lib.Amp()
            if cfg.FP16.level in ("O1", "O2") and amp_lib.gpu_available():
                self.amp = amp_lib.Amp(cfg.FP16.level, cfg.FP16.dtype)
            return

        if not loaders.get("Train"):
            raise ConfigError("DataLoader.Train is required for training")
        if not losses.get("Train"):
            raise ConfigError("Loss.Train is required for training")
        self.train_data = build_dataloader(loaders["Train"], "train", self.world.rank,
                                           self.world.size, self.seed,
                                           class_num=cfg.Model.get("class_num"))
        self.train_loss = build_loss(losses["Train"])
        self.train_metric = build_metrics(metrics["Train"]) if metrics.get("Train") else None

        self.accum = g.accum_steps
        if self.accum < 1:
            raise ConfigError(f"Global.accum_steps must be >= 1, got {self.accum}")
        micro = len(self.train_data.sampler)
        self.steps_per_epoch = micro // self.accum
        if self.steps_per_epoch == 0:
            bs = loaders["Train"]["sampler"].get("batch_size")
            raise ConfigError(
                f"DataLoader.Train: {len(self.train_data.dataset)} samples make {micro} batch(es) "
                f"of {bs} per device on {self.world.size} device(s); accum_steps={self.accum} "
                "needs at least that many: lower the batch size or accum_steps")
        self.total_steps = g.epochs * self.steps_per_epoch
        if g.max_train_step:
            self.total_steps = min(self.total_steps, g.max_train_step)
        self.lr = build_lr_scheduler(dict(cfg.LRScheduler), g.epochs, self.steps_per_epoch)
        use_o2 = cfg.FP16.level == "O2" and amp_lib.gpu_available()
        self.optimizer, self.clip = build_optimizer(dict(cfg.Optimizer), self.lr, self.model,
                                                    multi_precision=use_o2)
        self.model, self.optimizer, self.amp = amp_lib.setup(cfg.FP16, self.model,
                                                             self.optimizer, log)
        self.dp_model = distributed.wrap_model(self.model, self.world)

        # Position: `epoch` epochs are complete; `micro_in_epoch` micro-batches of the next are done.
        self.epoch, self.micro_in_epoch, self.global_step = 0, 0, 0
        self.best_top1, self.best_epoch = -1.0, -1
        self.nan_steps = 0
        self.last_top1 = None  # of the last evaluation in this process
        if g.checkpoint:
            self._resume(g.checkpoint)
        self.scalars = Scalars(os.path.join(g.output_dir, "vdl")
                               if g.use_visualdl and self.world.is_main else None)

    # ---------------------------------------------------------------- checkpoints
    def _states(self):
        return {"epoch": self.epoch, "micro_in_epoch": self.micro_in_epoch,
                "global_step": self.global_step, "best_top1": self.best_top1,
                "best_epoch": self.best_epoch, "seed": self.seed, "world_size": self.world.size,
                "accum_steps": self.accum,
                "rng": distributed.gather_objects(_rng_state(), self.world)}

    def save(self, prefix):
        states = self._states()  # a collective: every rank takes part
        if self.world.is_main:
            ckpt.save(self.out_dir, prefix, self.model, self.optimizer, self.lr, self.amp, states)
            self.logger.info(f"saved {os.path.join(self.out_dir, prefix)}")
        distributed.barrier(self.world)

    def _resume(self, prefix):
        params, opt, st = ckpt.load_resume(prefix, log=self.logger.warning)
        ckpt.set_model_state(self.model, params, f"Global.checkpoint {prefix}")
        ckpt.load_optimizer_state(self.optimizer, self.model, opt["optimizer"])
        if opt.get("lr_scheduler"):
            self.lr.set_state_dict(opt["lr_scheduler"])
        self.amp.set_state_dict(opt.get("scaler"))
        self.epoch, self.micro_in_epoch = st["epoch"], st["micro_in_epoch"]
        self.global_step = st["global_step"]
        self.best_top1, self.best_epoch = st["best_top1"], st["best_epoch"]
        if st.get("accum_steps", self.accum) != self.accum:
            raise ConfigError(f"Global.accum_steps={self.accum} but {prefix} was written with "
                              f"{st['accum_steps']}: resume with the same value")
        if st["seed"] != self.seed:
            self.logger.warning(f"resuming with seed {st['seed']} from the checkpoint "
                                f"(config says {self.seed})")
            self.seed = st["seed"]
        if st.get("world_size") == self.world.size:
            _set_rng_state(st["rng"][self.world.rank])
        else:
            self.logger.warning(f"checkpoint was written by {st.get('world_size')} processes, "
                                f"now {self.world.size}: data order is kept, RNG streams re-seeded")
            _seed_everything(self.seed + self.world.rank + self.global_step)
        self.logger.info(f"resumed from {prefix}: epoch {self.epoch}, step {self.global_step}, "
                         f"best top1 {self.best_top1:.4f}")

    def _save_epoch(self):
        g = self.cfg.Global
        self.save("latest")
        keep = g.max_num_latest_checkpoint
        if keep != 0 and self.epoch % g.save_interval == 0:
            self.save(f"epoch_{self.epoch}")
            if keep > 0 and self.world.is_main:
                for old in ckpt.epoch_checkpoints(self.out_dir)[:-keep]:
                    ckpt.remove(old)

    # ---------------------------------------------------------------- evaluation
    @paddle.no_grad()
    def evaluate(self, epoch=None):
        """Exact metrics over the whole eval set: per-rank sums, then one all-reduce."""
        self.model.eval()
        sums = {}
        count = 0
        tic = time.time()
        for images, labels in self.eval_data:  # DataPipeline: re-raises worker errors
            with self.amp.autocast():
                logits = self.model(images)
            logits = logits.astype("float32")
            n = images.shape[0]
            count += n
            if self.eval_loss is not None:
                sums["loss"] = sums.get("loss", 0.0) + float(self.eval_loss(logits, labels)["loss"]) * n
            if self.eval_metric is not None:
                for k, v in self.eval_metric(logits, labels).items():
                    sums[k] = sums.get(k, 0.0) + float(v)
        keys = sorted(sums)
        totals = distributed.all_reduce_sum([count] + [sums.get(k, 0.0) for k in keys], self.world)
        n_total = int(round(totals[0]))
        result = {k: v / max(n_total, 1) for k, v in zip(keys, totals[1:])}
        if self.mode == "train":
            self.model.train()
        tag = f"[Eval][Epoch {epoch}]" if epoch is not None else "[Eval]"
        body = ", ".join(f"{k}: {v:.5f}" for k, v in result.items())
        self.logger.info(f"{tag}[Avg]{body} ({n_total} images, {time.time() - tic:.1f}s)")
        return result

    def _after_eval(self, result, epoch):
        top1 = result.get("top1")
        self.last_top1 = top1
        for k, v in result.items():
            self.scalars.add(f"eval/{k}", v, self.global_step)
        if top1 is not None and top1 > self.best_top1:
            self.best_top1, self.best_epoch = top1, epoch
            self.save("best_model")
        if top1 is not None:
            self.logger.info(f"[Eval][Epoch {epoch}][best top1: {self.best_top1:.5f} "
                             f"(epoch {self.best_epoch})]")

    # ---------------------------------------------------------------- training
    def _optimizer_step(self, loss_value):
        """Apply one optimizer step; returns False when it was skipped (inf/nan)."""
        bad = not math.isfinite(loss_value)
        if self.world.size > 1:  # every rank must agree to skip
            bad = distributed.all_reduce_sum([float(bad)], self.world)[0] > 0
        scaler = self.amp.scaler
        if bad and scaler is None:
            self.optimizer.clear_grad()
            self.nan_steps += 1
            self.logger.warning(f"loss is {loss_value} at step {self.global_step + 1}: update "
                                f"skipped ({self.nan_steps}/{self.cfg.Global.max_nan_steps})")
            if self.nan_steps >= self.cfg.Global.max_nan_steps:
                raise TrainingError(
                    f"loss was NaN/inf for {self.nan_steps} consecutive steps (Global.max_nan_steps)"
                    f" at epoch {self.epoch + 1}, step {self.global_step + 1}; stopped. The last "
                    f"good checkpoint is {os.path.join(self.out_dir, 'latest')} if one was saved")
            return False
        self.nan_steps = 0
        if scaler is not None:
            scaler.unscale_(self.optimizer)
        if self.clip is not None:
            self.clip([p for p in self.model.parameters() if not p.stop_gradient])
        if scaler is not None:
            scale_before = float(scaler._scale)
            scaler.step(self.optimizer)
            scaler.update()
            skipped = bool(getattr(scaler, "_found_inf", False))
            if skipped:
                self.logger.warning(f"step {self.global_step + 1}: inf/nan gradients, update "
                                    f"skipped, loss scale {scale_before:g} -> {float(scaler._scale):g}")
        else:
            self.optimizer.step()
        self.optimizer.clear_grad()
        self.lr.step()
        return True

    def train(self):
        g, log = self.cfg.Global, self.logger
        bs = self.train_data.sampler.batch_size
        global_batch = bs * self.world.size * self.accum
        log.info(f"training {g.epochs} epochs x {self.steps_per_epoch} steps, global batch "
                 f"{global_batch} ({bs} x {self.world.size} device(s) x {self.accum} accum), "
                 f"{self.total_steps} steps in all")
        start_step, t_start = self.global_step, time.time()
        stopped = False
        while self.epoch < g.epochs and not stopped:
            stopped = self._train_epoch(global_batch)
            if self.micro_in_epoch >= self.steps_per_epoch * self.accum:  # epoch complete
                self.epoch, self.micro_in_epoch = self.epoch + 1, 0
                if (g.eval_during_train and self.eval_data is not None and g.eval_unit == "epoch"
                        and self.epoch % g.eval_interval == 0):
                    self._after_eval(self.evaluate(self.epoch), self.epoch)
                self._save_epoch()
            elif stopped:
                self.save("latest")
        elapsed = time.time() - t_start
        steps = self.global_step - start_step
        ips = steps * global_batch / max(elapsed, 1e-9)
        best = "no evaluation"
        if self.best_top1 >= 0:
            best = (f"final top1 {self.last_top1:.5f}, " if self.last_top1 is not None else "") + \
                f"best top1 {self.best_top1:.5f} (epoch {self.best_epoch})"
        log.info(f"[Train] finished: {self.global_step} steps, {self.epoch} epoch(s) in "
                 f"{format_eta(elapsed)} ({ips:.1f} images/sec); {best}; "
                 f"checkpoints in {self.out_dir}")
        self.scalars.close()
        return {"best_top1": self.best_top1, "global_step": self.global_step, "ips": ips}

    def _train_epoch(self, global_batch):
        """Runs (the rest of) one epoch; returns True when max_train_step was reached."""
        g, log = self.cfg.Global, self.logger
        data = self.train_data
        n_micro = self.steps_per_epoch * self.accum
        data.sampler.set_epoch(self.epoch)
        data.sampler.set_start_iter(self.micro_in_epoch)
        self.model.train()
        meters = {k: Meter() for k in ("loss", "batch_cost", "reader_cost")}
        metric_sums, metric_count = {}, 0
        step_loss = 0.0
        tic = time.time()
        micro = self.micro_in_epoch
        for images, labels in data:  # DataPipeline: re-raises worker errors
            if micro >= n_micro:
                break
            meters["reader_cost"].update(time.time() - tic)
            if micro % self.accum == 0:
                step_start = tic  # an optimizer step's cost includes all its micro-batches
            if data.batch_transform is not None:
                rng = np.random.default_rng([self.seed, self.epoch, micro, self.world.rank])
                images, labels = data.batch_transform(images, labels, rng)
            last = (micro + 1) % self.accum == 0
            sync = contextlib.nullcontext()
            if self.world.size > 1 and not last:
                sync = self.dp_model.no_sync()
            with sync:
                with self.amp.autocast():
                    logits = self.dp_model(images)
                logits = logits.astype("float32")
                loss = self.train_loss(logits, labels)["loss"]
                scaled = loss / self.accum
                if self.amp.scaler is not None:
                    scaled = self.amp.scaler.scale(scaled)
                scaled.backward()
            step_loss += float(loss) / self.accum
            if self.train_metric is not None:
                for k, v in self.train_metric(logits.detach(), labels).items():
                    metric_sums[k] = metric_sums.get(k, 0.0) + float(v)
                metric_count += images.shape[0]
            micro += 1
            if not last:
                tic = time.time()
                continue

            lr_value = self.optimizer.get_lr()
            if self._optimizer_step(step_loss):
                self.global_step += 1
                meters["loss"].update(step_loss)
            self.micro_in_epoch = micro
            step_loss = 0.0
            meters["batch_cost"].update(time.time() - step_start)
            step_in_epoch = micro // self.accum
            if self.global_step % g.print_batch_step == 0 or step_in_epoch == self.steps_per_epoch:
                self._log_step(lr_value, meters, metric_sums, metric_count, global_batch,
                               step_in_epoch)
                metric_sums, metric_count = {}, 0
                for m in meters.values():
                    m.reset()
            if (g.eval_during_train and self.eval_data is not None and g.eval_unit == "step"
                    and self.global_step % g.eval_interval == 0):
                self._after_eval(self.evaluate(self.epoch + 1), self.epoch + 1)
            if g.max_train_step and self.global_step >= g.max_train_step:
                log.info(f"reached Global.max_train_step={g.max_train_step}")
                return True
            tic = time.time()
        return False

    def _log_step(self, lr, meters, metric_sums, metric_count, global_batch, step_in_epoch):
        g = self.cfg.Global
        cost = meters["batch_cost"].avg
        ips = global_batch / max(cost, 1e-9)
        eta = (self.total_steps - self.global_step) * cost
        metrics = "".join(f", {k}: {v / max(metric_count, 1):.5f}"
                          for k, v in sorted(metric_sums.items()))
        self.logger.info(
            f"[Train][Epoch {self.epoch + 1}/{g.epochs}][Iter: {step_in_epoch}/"
            f"{self.steps_per_epoch}]lr: {lr:.6g}, loss: {meters['loss'].avg:.5f}{metrics}, "
            f"batch_cost: {cost:.4f}s, reader_cost: {meters['reader_cost'].avg:.5f}s, "
            f"ips: {ips:.2f} images/sec, eta: {format_eta(eta)}")
        self.scalars.add("train/loss", meters["loss"].avg, self.global_step)
        self.scalars.add("train/lr", lr, self.global_step)
        self.scalars.add("train/ips", ips, self.global_step)
        for k, v in metric_sums.items():
            self.scalars.add(f"train/{k}", v / max(metric_count, 1), self.global_step)
