"""Data parallelism and ZeRO sharding over the visible devices, each launched as a user would
(launch.py: plsc's train CLI under paddle.distributed.launch): N devices at batch 4 each equal
one device at batch 4N; sharding stages 1, 2 and 3 equal plain data parallelism. On a CPU build the
devices are 2 gloo processes. Compared: the weights each run saves (max |difference|)."""
import os
from types import SimpleNamespace

import numpy as np
import paddle

from ..errors import ConfigError
from . import engine_run, hardware, launch
from .config import train_config, weights_file
from .result import FAIL, Result, skip, tolerance, within

# Float32 noise of the same 3 steps with the gradient summed in another order: measured 3.0e-8
# (momentum SGD, data parallel vs one process) and 0 (sharding stage 1 vs data parallel) with 2
# gloo processes; the project's equivalence tolerance (tests/test_engine_contract.py). On GPU
# the batch-4N and batch-4 matmuls use different kernels (not measured here, no GPU): 1e-5,
# still 1000x below what a factor-2 gradient error moves (the runs move the weights by ~0.1).
TOL = {"cpu": 6e-7, "gpu": 1e-5}
PER_DEVICE = 4
# Data parallel vs one device: SGD with momentum, no decay or clipping, so that the update is
# linear in the gradient and a gradient summed where it should be averaged shows as a factor 2
# (Adam's update is nearly invariant to the gradient's scale). Sharding: AdamW (config.py), whose
# moments are what stage 1 shards.
MOMENTUM = {"name": "Momentum", "momentum": 0.9, "weight_decay": 0.0, "grad_clip": None}
MOMENTUM_LR = ["LRScheduler.learning_rate=0.1"]
STAGES = (1, 2, 3)


def devices():
    """(device, number of devices to use, None or why data parallelism cannot run)."""
    n = hardware.gpu_count()
    if n == 0:
        return "cpu", 2, None  # 2 gloo processes on the host
    return "gpu", n, None if n > 1 else "one device only"


def _weights(run_dir):
    return {k: np.asarray(v, np.float64) for k, v in paddle.load(weights_file(run_dir)).items()}


def _launched_run(ctx, tag, nproc, overrides=(), **sections):
    device, _, _ = devices()
    run_dir = os.path.join(ctx["workdir"], tag)
    path = train_config(run_dir, ctx["data"], device, batch_size=PER_DEVICE, **sections)
    args = ["train", "-c", path] + (["-o", *overrides] if overrides else [])
    launch.run_worker(ctx, nproc, args, tag)
    return _weights(run_dir)


def check_dp(ctx):
    device, n, reason = devices()
    name = f"data parallel: {n} devices = 1 x batch {PER_DEVICE * n}"
    if reason:
        return [skip(name, reason)]
    runs = {}
    for tag, batch, extra in (("dp_one", PER_DEVICE * n, []),
                              ("dp_start", PER_DEVICE, ["Global.max_train_step=1",
                                                        "LRScheduler.learning_rate=0.0"])):
        run_dir = os.path.join(ctx["workdir"], tag)
        path = train_config(run_dir, ctx["data"], device, batch_size=batch, Optimizer=MOMENTUM)
        engine_run.train(engine_run.build(path, MOMENTUM_LR + extra))
        runs[tag] = _weights(run_dir)
    dp = _launched_run(ctx, "dp", n, MOMENTUM_LR, Optimizer=MOMENTUM)
    moved = engine_run.max_abs_diff(runs["dp_one"], runs["dp_start"])
    res = within(name, engine_run.max_abs_diff(dp, runs["dp_one"]), tolerance(TOL[device]),
                 f"max |weights difference| after 3 momentum-SGD steps; the steps move them "
                 f"{moved:.2g}")
    if moved < 1000 * TOL[device]:  # the comparison could not tell a factor-2 gradient
        res = Result(name, FAIL, res.figure, f"training moved the weights only {moved:.2g}")
    return [res]


def _stage_refusal(stage, device, n):
    """The engine's own reason when it cannot run `stage` here (sharding.plan), else None."""
    from ..engine import sharding

    try:
        sharding.plan({"sharding_stage": stage, "sharding_degree": None},
                      SimpleNamespace(size=n, rank=0), device, {}, lambda _msg: None)
    except ConfigError as e:
        return f"refused by plsc: {e}"
    return None


def check_sharding(ctx):
    device, n, reason = devices()
    out = []
    for stage in STAGES:
        name = f"sharding stage {stage} = data parallel"
        why = reason or _stage_refusal(stage, device, n)
        if why:
            out.append(skip(name, why))
            continue
        if "adamw_dp" not in ctx:
            ctx["adamw_dp"] = _launched_run(ctx, "adamw_dp", n)
        got = _launched_run(ctx, f"sharding{stage}", n,
                            [f"DistributedStrategy.sharding.sharding_stage={stage}"])
        out.append(within(name, engine_run.max_abs_diff(got, ctx["adamw_dp"]),
                          tolerance(TOL[device]),
                          f"max |weights difference| vs plain data parallel, {n} devices, "
                          "3 AdamW steps"))
    return out
