"""Run setup, in one place: process group, device, seed, output directory, the config record,
the logger and (for training) VisualDL scalars. Everything else is built from what this returns.
"""
import logging
import logging.handlers
import os
from dataclasses import dataclass
from typing import Any

import paddle

from .. import config as config_lib
from ..cpu import tune_cpu
from . import amp as amp_lib
from . import distributed, rng, run_dir
from .logger import Scalars, setup_logger


@dataclass
class RunContext:
    cfg: Any
    world: distributed.World
    out_dir: str
    logger: Any
    device: str
    seed: int
    scalars: Scalars


def _set_device(device, logger):
    if device == "gpu" and not amp_lib.gpu_available():
        logger.warning("Global.device=gpu but this Paddle build sees no GPU; running on cpu")
        device = "cpu"
    elif device == "xpu" and not paddle.is_compiled_with_xpu():
        logger.warning("Global.device=xpu but this Paddle build has no XPU support; running on cpu")
        device = "cpu"
    paddle.set_device(device)
    return device


def setup_run(cfg, mode):
    """Join the process group, pick the device and seed. Nothing is written yet: log records
    are buffered until commit_run() (called once building succeeded), so a run that fails to
    build leaves no trace in the output directory. `mode` is "train" or "eval"."""
    tune_cpu()
    g = cfg.Global
    world = distributed.init()
    out_dir = os.path.join(g.output_dir, cfg.Model.name)
    logger = setup_logger(None, world.is_main)
    logger.addHandler(logging.handlers.BufferingHandler(capacity=1 << 30))
    device = _set_device(g.device, logger)
    if g.flags:
        paddle.set_flags(dict(g.flags))
    # One seed for the run (the sampler's shuffle must agree on every rank); each rank's
    # dropout/augmentation RNG is offset by its rank so ranks see different noise.
    seed = g.seed if g.seed is not None else int.from_bytes(os.urandom(4), "little") >> 1
    seed = distributed.broadcast_int(seed, world)
    rng.seed_everything(seed + world.rank)
    scalars = Scalars(None)  # VisualDL starts in commit_run (it creates files)
    logger.info(f"plsc {mode}: {cfg.Model.name}, {world.size} process(es) on {device}, "
                f"seed {seed}, output {out_dir}")
    return RunContext(cfg, world, out_dir, logger, device, seed, scalars)


def commit_run(ctx, mode):
    """Create the output directory and start writing: `{mode}.log` (with the records buffered
    since setup_run), the config record (train only: eval never rewrites config.yaml; a resume
    whose config differs from the recorded one writes config.resume-<n>.yaml alongside, see
    run_dir.resume_record_name), and VisualDL scalars. Idempotent."""
    logger, g = ctx.logger, ctx.cfg.Global
    buffers = [h for h in logger.handlers if isinstance(h, logging.handlers.BufferingHandler)]
    if not buffers:
        return ctx
    for h in buffers:
        logger.removeHandler(h)
    if not ctx.world.is_main:
        return ctx
    record_name = run_dir.resume_record_name(ctx.out_dir, ctx.cfg) if mode == "train" else None
    os.makedirs(ctx.out_dir, exist_ok=True)
    if record_name:
        with open(os.path.join(ctx.out_dir, record_name), "w") as f:
            f.write(config_lib.dump_config(ctx.cfg))
    fh = logging.FileHandler(os.path.join(ctx.out_dir, f"{mode}.log"))
    fh.setFormatter(logger.handlers[0].formatter)
    for h in buffers:
        for record in h.buffer:
            fh.handle(record)
    logger.addHandler(fh)
    if record_name and record_name != "config.yaml":
        logger.info(f"config differs from the recorded config.yaml: this launch's config is "
                    f"recorded in {record_name}")
    if mode == "train" and g.use_visualdl:
        ctx.scalars = Scalars(os.path.join(g.output_dir, "vdl"))
    return ctx
