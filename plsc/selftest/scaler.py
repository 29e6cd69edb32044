"""The fp16 loss scaler: an inf injected into one rank's gradient at step 2 must skip that step
on every rank, lower the scale, and leave the weights as they were. With several GPUs the check
runs launched (launch.py), the fault on rank 0 only; with one GPU in this process."""
import glob
import json
import os

import numpy as np

from . import engine_run, hardware, launch
from .config import train_config
from .result import FAIL, PASS, Result, skip

NAME = "fp16 loss scaler: inf gradient"
INJECT_STEP = 2
# the scale must drop at the first overflow (Paddle's default waits for 2)
GRAD_SCALER = {"init_loss_scaling": 1024.0, "decr_every_n_nan_or_inf": 1, "decr_ratio": 0.5}


def run_rank(workdir, data_root, rank):
    """One rank's run (in this process): the step results and whether the weights moved."""
    path = train_config(os.path.join(workdir, "scaler"), data_root, "gpu",
                        name=f"selftest{rank}.yaml",
                        FP16={"level": "O1", "dtype": "float16", "GradScaler": GRAD_SCALER})
    trainer = engine_run.build(path)
    first = trainer.model.parameters()[0]

    def inject(step):
        if step == INJECT_STEP and rank == 0:
            return first.register_hook(lambda g: g * float("inf")).remove
        return None

    rec = engine_run.train(trainer, around_step=INJECT_STEP, on_step=inject)
    hit = rec["steps"][INJECT_STEP - 1]
    final = engine_run.params_snapshot(trainer.model)
    return {"statuses": [s.status for s in rec["steps"]], "scale": hit.scale,
            "new_scale": hit.new_scale,
            "moved": engine_run.max_abs_diff(rec["before"], rec["after"]),
            "checksum": float(sum(np.abs(v.astype(np.float64)).sum() for v in final.values()))}


def check_scaler(ctx):
    reason = hardware.half_reason("float16")
    if reason:
        return [skip(NAME, reason)]
    n = min(hardware.gpu_count(), 2)
    if n > 1:
        out_dir = os.path.join(ctx["workdir"], "scaler_ranks")
        launch.run_worker(ctx, n, ["scaler", out_dir, ctx["data"]], "scaler")
        ranks = [json.load(open(p)) for p in sorted(glob.glob(os.path.join(out_dir, "*.json")))]
    else:
        ranks = [run_rank(ctx["workdir"], ctx["data"], 0)]
    return [judge(ranks)]


def judge(ranks):
    problems = []
    for i, r in enumerate(ranks):
        st = r["statuses"]
        if st[INJECT_STEP - 1] != "overflow" or st.count("overflow") != 1:
            problems.append(f"rank {i}: step statuses {st} (expected only step "
                            f"{INJECT_STEP} skipped as an overflow)")
        if r["scale"] is None or not r["new_scale"] < r["scale"]:
            problems.append(f"rank {i}: loss scale {r['scale']} -> {r['new_scale']} (must drop)")
        if r["moved"] != 0:
            problems.append(f"rank {i}: the skipped step moved the weights by {r['moved']:.3g}")
    if len({r["checksum"] for r in ranks}) > 1 or len({tuple(r["statuses"]) for r in ranks}) > 1:
        problems.append("ranks disagree on the steps taken or the final weights")
    r0 = ranks[0]
    figure = f"scale {r0['scale']}->{r0['new_scale']}"
    return Result(NAME, FAIL if problems else PASS, figure, "; ".join(problems) or
                  f"step {INJECT_STEP} skipped, weights unchanged, {len(ranks)} rank(s) agree")


def worker(out_dir, data_root):
    """Launched on each rank (worker.py): dump this rank's record."""
    from ..engine.distributed import launched_rank

    rank = launched_rank()
    rec = run_rank(out_dir, data_root, rank)
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(rec, f)
