"""The end of a run: the final weights are evaluated (once) and the summary names its figures;
the LR schedule never changes silently (resume with other epochs, warmup covering the run)."""
import math
import os
import re

import pytest

from tiny import run_tool, tiny_config

from plsc.config import get_config
from plsc.engine import build_trainer, run


def _log(out):
    return open(out / "train.log").read().splitlines()


def test_short_run_evaluates_its_final_weights_and_writes_best_model(tmp_path):
    path = tiny_config(tmp_path, tmp_path / "shapes", epochs=2, **{"Global.eval_interval": 5})
    out = tmp_path / "out/VisionTransformer"
    summary = run(build_trainer(get_config(path)))
    assert (out / "best_model.pdparams").exists()
    line = [x for x in _log(out) if "[Train] finished" in x][-1]
    m = re.search(r"final weights \(epoch 2\): top1 ([0-9.]+); best \(epoch 2\): top1 [0-9.]+ -> "
                  + re.escape(str(out / "best_model")), line)
    assert m, line
    # independent reference: tools/eval.py on the weights the run ended with
    r = run_tool("eval", ["-c", path, "-o", f"Global.pretrained_model={out / 'latest'}"])
    assert r.returncode == 0, r.stderr
    assert f"top1={m.group(1)}" in r.stdout, (line, r.stdout)
    assert summary["final_top1"] is not None


@pytest.mark.parametrize("unit", ["epoch", "step"])
def test_evaluated_last_epoch_is_not_evaluated_twice(tmp_path, unit):
    # 8 steps per epoch: step-unit evaluation every 8 steps also evaluates the last weights
    interval = 1 if unit == "epoch" else 8
    path = tiny_config(tmp_path, tmp_path / "shapes", epochs=2,
                       **{"Global.eval_unit": unit, "Global.eval_interval": interval})
    out = tmp_path / "out/VisionTransformer"
    run(build_trainer(get_config(path)))
    assert len([x for x in _log(out) if "[Eval][Epoch" in x and "[Avg]" in x]) == 2


def _vit_cosine(t, w, total, base=0.1):
    return base * 0.5 * (1 + math.cos(math.pi * (t - w) / (total - w)))


def test_lr_schedule_change_on_resume_is_logged_once_and_only_when_it_changes(tmp_path):
    # 32 images / batch 4 = 8 steps per epoch; warmup 2 steps (tiny_config)
    path = tiny_config(tmp_path, tmp_path / "shapes", epochs=2,
                       **{"Global.eval_during_train": False})
    out = tmp_path / "out/VisionTransformer"
    run(build_trainer(get_config(path, ["Global.max_train_step=8"])))
    build_trainer(get_config(path, [f"Global.checkpoint={out / 'latest'}"]))
    assert not [x for x in _log(out) if "LR schedule" in x]  # same schedule: nothing said
    build_trainer(get_config(path, [f"Global.checkpoint={out / 'latest'}", "Global.epochs=4"]))
    lines = [x.split(": ", 1)[1] for x in _log(out) if "LR schedule" in x]
    was, now = _vit_cosine(8, 2, 16), _vit_cosine(8, 2, 32)
    assert lines == [f"LR schedule changed on resume: total steps 16 -> 32; lr at step 8 was "
                     f"{was:.3g}, now {now:.3g}"]


def test_warmup_covering_the_whole_run_is_warned_once(tmp_path):
    path = tiny_config(tmp_path, tmp_path / "shapes", epochs=1,
                       **{"Global.eval_during_train": False, "LRScheduler.warmup_steps": 8})
    out = tmp_path / "out/VisionTransformer"
    run(build_trainer(get_config(path)))
    lines = [x.split(": ", 1)[1] for x in _log(out) if "] WARNING: " in x]
    assert lines == ["LRScheduler.warmup_steps (8) >= the run's 8 steps: the whole run is "
                     "warmup, the lr never reaches LRScheduler.learning_rate (0.1)"]
    path = tiny_config(tmp_path / "b", tmp_path / "shapes", epochs=1,
                       **{"Global.eval_during_train": False, "LRScheduler.warmup_steps": 7})
    run(build_trainer(get_config(path)))
    assert not [x for x in _log(tmp_path / "b/out/VisionTransformer") if "] WARNING: " in x]
