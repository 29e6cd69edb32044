"""Precision checks: fp32 training, fp16/bf16 AMP at O1 and O2 against fp32, and the fp16 loss
scaler. A few steps of the tiny ViT (config.py) through the engine (engine_run.py)."""
import math
import os

import numpy as np
import paddle

from . import engine_run, hardware
from .config import tiny_vit, train_config, weights_file
from .result import FAIL, PASS, Result, skip, tolerance

# Relative loss difference allowed after 3 AdamW steps: a few units of each format's rounding
# (fp16 eps 9.8e-4, bf16 eps 7.8e-3) accumulated over the forward pass.
LOSS_RTOL = {"float16": 5e-3, "bfloat16": 3e-2}
AMP_RUNS = [("float16", "O1"), ("float16", "O2"), ("bfloat16", "O1"), ("bfloat16", "O2")]
SHORT = {"float16": "fp16", "bfloat16": "bf16"}


def _device():
    return "cpu" if hardware.no_gpu_reason() else "gpu"


# A repeat fp32 run: identical to the bit on CPU (measured); GPU kernels that reduce with atomic
# adds (some backward passes) may sum in another order, so float32 noise is allowed there.
REPEAT_TOL = {"cpu": 0.0, "gpu": 1e-6}


def check_fp32(ctx):
    """Two fp32 runs with one seed: finite losses, equal (what every equivalence below relies
    on), and an fp32 checkpoint."""
    name = "fp32 training (3 steps, twice)"
    runs = []
    for i in range(2):
        path = train_config(os.path.join(ctx["workdir"], f"fp32_{i}"), ctx["data"], _device(),
                            model=tiny_vit("math"))
        runs.append(engine_run.train(engine_run.build(path)))
    a, b = runs[0]["losses"], runs[1]["losses"]
    ctx["fp32_losses"] = a
    if not all(map(math.isfinite, a)) or len(a) != 3:
        return [Result(name, FAIL, "", f"losses {a}: expected 3 finite values")]
    diff = max(abs(x - y) / abs(y) for x, y in zip(a, b))
    tol = tolerance(REPEAT_TOL[_device()])
    dtypes = _checkpoint_dtypes(os.path.join(ctx["workdir"], "fp32_0"))
    ok = diff <= tol and dtypes == {"float32"}
    return [Result(name, PASS if ok else FAIL, f"{diff:.3g}",
                   f"3 finite losses; the repeat run's differ by {diff:.3g} (relative, "
                   f"tolerance {tol:.3g}); checkpoint dtypes {sorted(dtypes)}")]


def _checkpoint_dtypes(run_dir):
    state = paddle.load(weights_file(run_dir))
    return {str(np.asarray(v).dtype) for v in state.values()}


def _watch_dtypes(model):
    """Records the output dtypes of LayerNorm, Linear and softmax while installed; returns
    (record, undo)."""
    seen = {"layer_norm": set(), "linear": set(), "softmax": set()}
    hooks = []
    for layer in model.sublayers():
        kind = ("layer_norm" if isinstance(layer, paddle.nn.LayerNorm) else
                "linear" if isinstance(layer, paddle.nn.Linear) else None)
        if kind:
            hooks.append(layer.register_forward_post_hook(
                lambda _l, _i, out, kind=kind: seen[kind].add(str(out.dtype).split(".")[-1])))
    real_softmax = paddle.nn.functional.softmax

    def softmax(*args, **kwargs):
        out = real_softmax(*args, **kwargs)
        seen["softmax"].add(str(out.dtype).split(".")[-1])
        return out

    paddle.nn.functional.softmax = softmax  # the math attention path calls F.softmax

    def undo():
        paddle.nn.functional.softmax = real_softmax
        for h in hooks:
            h.remove()
    return seen, undo


def check_amp(ctx):
    """fp16 and bf16 at O1 and O2 against the fp32 run (check_fp32 runs first)."""
    out = []
    for dtype, level in AMP_RUNS:
        name = f"AMP {SHORT[dtype]} {level} vs fp32"
        reason = hardware.half_reason(dtype)
        if reason:
            out.append(skip(name, reason))
            continue
        if not ctx.get("fp32_losses"):
            out.append(Result(name, FAIL, "", "no fp32 reference (the fp32 check failed)"))
            continue
        out.append(_amp_run(ctx, name, dtype, level))
    return out


def _amp_run(ctx, name, dtype, level):
    run_dir = os.path.join(ctx["workdir"], f"amp_{dtype}_{level}")
    # a moderate initial loss scale: Paddle's 65536 often overflows the first steps, and a
    # skipped step would part the run from the fp32 one (that is the scaler check's subject)
    fp16 = {"level": level, "dtype": dtype, "GradScaler": {"init_loss_scaling": 1024.0}}
    path = train_config(run_dir, ctx["data"], "gpu", model=tiny_vit("math"), FP16=fp16)
    trainer = engine_run.build(path)
    seen, undo = _watch_dtypes(trainer.model)
    try:
        rec = engine_run.train(trainer)
    finally:
        undo()
    losses = rec["losses"]
    ref = ctx["fp32_losses"]
    rel = max(abs(a - b) / abs(b) for a, b in zip(losses, ref))
    problems = [f"step {i + 1} was skipped ({s.status})"
                for i, s in enumerate(rec["steps"]) if s.status != "ok"]
    if seen["layer_norm"] != {"float32"} or seen["softmax"] != {"float32"}:
        problems.append(f"LayerNorm out {sorted(seen['layer_norm'])}, softmax out "
                        f"{sorted(seen['softmax'])} (expected float32)")
    if not seen["linear"] - {"float32"}:
        problems.append("no Linear layer ran in half precision: AMP is not on")
    if level == "O2":
        problems += _o2_problems(trainer, run_dir)
    tol = tolerance(LOSS_RTOL[dtype])
    if rel > tol:
        problems.insert(0, f"loss rel diff {rel:.3g} exceeds {tol:.3g}")
    if len(losses) != len(ref):
        problems.insert(0, f"{len(losses)} losses, fp32 run had {len(ref)}")
    what = "LayerNorm/softmax fp32" + ("; fp32 master weights and checkpoint" if level == "O2"
                                       else "")
    return Result(name, FAIL if problems else PASS, f"{rel:.3g}",
                  "; ".join(problems) if problems else
                  f"max rel loss diff over 3 steps (tolerance {tol:.3g}); {what}")


def _o2_problems(trainer, run_dir):
    """O2: half parameters outside the norms, an fp32 master copy of each, fp32 checkpoint."""
    problems = []
    half = [p for p in trainer.model.parameters() if p.dtype != paddle.float32]
    if not half:
        problems.append("O2 left every parameter in fp32")
    # Paddle keeps the master copies in the optimizer's (private) _master_weights, by name
    masters = getattr(trainer.optim.optimizer, "_master_weights", None) or {}
    missing = [p.name for p in half if p.name not in masters
               or masters[p.name].dtype != paddle.float32]
    if missing:
        problems.append(f"{len(missing)} half parameters without an fp32 master weight")
    dtypes = _checkpoint_dtypes(run_dir)
    if dtypes != {"float32"}:
        problems.append(f"checkpoint dtypes {sorted(dtypes)} (expected float32)")
    return problems
