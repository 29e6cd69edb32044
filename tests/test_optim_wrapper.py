"""The optim wrapper's step decision: a non-finite step changes nothing, on every rank."""
import json
import os
import subprocess
import sys

import numpy as np
import paddle

from plsc.engine.amp import Amp
from plsc.engine.distributed import World, init, wrap_model  # noqa: F401 (init: rank script)
from plsc.engine.optim_wrapper import OptimWrapper
from plsc.optim import build_lr_scheduler, build_optimizer
from tiny import ROOT


def make(world=World(), seed=0):
    paddle.seed(seed)
    model = paddle.nn.Linear(4, 3)
    lr = build_lr_scheduler({"name": "ViTLRScheduler", "learning_rate": 0.1, "warmup_steps": 2},
                            1, 10)
    opt, clip = build_optimizer({"name": "AdamW", "weight_decay": 0.1, "grad_clip": {
        "name": "ClipGradByGlobalNorm", "clip_norm": 1.0}}, lr, model)
    dp = wrap_model(model, world)
    params = [p for p in model.parameters() if not p.stop_gradient]
    return model, dp, OptimWrapper(opt, lr, Amp(), params, clip, 1, world, dp)


def step(dp, wrapper, x, extra=None):
    with wrapper.micro_context():
        loss = dp(x).square().mean()
        if extra is not None:  # changes the loss value, not the gradients
            loss = loss + paddle.to_tensor(extra, dtype="float32")
        return wrapper.update(loss)


def snapshot(model, wrapper):
    weights = {k: v.numpy().copy() for k, v in model.state_dict().items()}
    opt = {k: np.asarray(v.numpy() if hasattr(v, "numpy") else v).copy()
           for k, v in wrapper.optimizer.state_dict().items() if k != "LR_Scheduler"}
    return weights, opt, wrapper.lr_scheduler.get_lr()


def same(a, b):
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_nan_gradient_skips_the_step_and_changes_nothing():
    model, dp, wrapper = make()
    x = paddle.to_tensor(np.random.default_rng(0).standard_normal((5, 4)).astype("float32"))
    assert step(dp, wrapper, x).status == "ok"  # AdamW moments are non-zero from here on
    w0, o0, lr0 = snapshot(model, wrapper)
    hook = model.weight.register_hook(lambda g: g * float("nan"))  # finite loss, NaN gradient
    result = step(dp, wrapper, x)
    hook.remove()
    assert result.status == "nonfinite" and not result.counted and np.isfinite(float(result.loss))
    w1, o1, lr1 = snapshot(model, wrapper)
    assert same(w0, w1) and same(o0, o1) and lr0 == lr1
    assert all(p.grad is None or not np.isnan(p.grad.numpy()).any() for p in model.parameters())
    assert step(dp, wrapper, x).status == "ok"  # and training goes on
    assert not same(w0, snapshot(model, wrapper)[0])


RANK_SCRIPT = """
import json, os, sys
import numpy as np, paddle
sys.path.insert(0, {root!r}); sys.path.insert(0, {tests!r})
from test_optim_wrapper import init, make, snapshot, step, same
world = init()
model, dp, wrapper = make(world)
x = paddle.to_tensor(np.random.default_rng(world.rank).standard_normal((5, 4)).astype("float32"))
first = step(dp, wrapper, x).status
w0, o0, lr0 = snapshot(model, wrapper)
# only rank 1 sees a NaN loss; the gradients (all-reduced) are finite on both ranks
result = step(dp, wrapper, x, extra=float("nan") if world.rank == 1 else 0.0)
w1, o1, lr1 = snapshot(model, wrapper)
json.dump({{"first": first, "status": result.status, "unchanged": same(w0, w1) and same(o0, o1)
           and lr0 == lr1}}, open(os.path.join({out!r}, f"rank{{world.rank}}.json"), "w"))
"""


def test_a_nan_on_one_rank_skips_the_step_on_every_rank(tmp_path):
    script = tmp_path / "ranks.py"
    script.write_text(RANK_SCRIPT.format(root=ROOT, tests=os.path.join(ROOT, "tests"),
                                         out=str(tmp_path)))
    r = subprocess.run([sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node",
                        "2", "--log_dir", str(tmp_path / "logs"), str(script)],
                       capture_output=True, text=True, timeout=240, cwd=ROOT)
    logs = "".join(open(tmp_path / "logs" / f).read()[-2000:] for f in
                   sorted(os.listdir(tmp_path / "logs"))) if (tmp_path / "logs").is_dir() else ""
    assert r.returncode == 0, r.stderr[-2000:] + logs
    ranks = [json.load(open(tmp_path / f"rank{i}.json")) for i in (0, 1)]
    assert ranks == [{"first": "ok", "status": "nonfinite", "unchanged": True}] * 2
