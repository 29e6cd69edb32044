"""Run setup, in one place: process group, device, seed, output directory, the config record,
the logger and (for training) VisualDL scalars. Everything else is built from what this returns.
"""
import os
from dataclasses import dataclass
from typing import Any

import paddle

from .. import config as config_lib
from ..cpu import tune_cpu
from . import amp as amp_lib
from . import distributed, rng
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
    """Join the process group, pick the device and seed, create the output directory with
    config.yaml and `{mode}.log`. `mode` is "train" or "eval"."""
    tune_cpu()
    g = cfg.Global
    world = distributed.init()
    out_dir = os.path.join(g.output_dir, cfg.Model.name)
    logger = setup_logger(os.path.join(out_dir, f"{mode}.log"), world.is_main)
    device = _set_device(g.device, logger)
    if g.flags:
        paddle.set_flags(dict(g.flags))
    # One seed for the run (the sampler's shuffle must agree on every rank); each rank's
    # dropout/augmentation RNG is offset by its rank so ranks see different noise.
    seed = g.seed if g.seed is not None else int.from_bytes(os.urandom(4), "little") >> 1
    seed = distributed.broadcast_int(seed, world)
    rng.seed_everything(seed + world.rank)
    if world.is_main:
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, "config.yaml"), "w") as f:
            f.write(config_lib.dump_config(cfg))
    scalars = Scalars(os.path.join(g.output_dir, "vdl")
                      if mode == "train" and g.use_visualdl and world.is_main else None)
    logger.info(f"plsc {mode}: {cfg.Model.name}, {world.size} process(es) on {device}, "
                f"seed {seed}, output {out_dir}")
    return RunContext(cfg, world, out_dir, logger, device, seed, scalars)
