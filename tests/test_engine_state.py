"""What a checkpoint holds and how a run reports: JSON .pdstates, durable renames, no sentinel
best metric, throughput over the images that exist, evaluation without training parts."""
import json
import os
import random

import numpy as np
import paddle
import pytest

from plsc.config import get_config
from plsc.engine import build, build_trainer, checkpoint as ckpt, evaluate, rng, run
from tiny import tiny_config


def test_rng_state_survives_json_exactly():
    rng.seed_everything(5)
    random.gauss(0, 1), np.random.normal(), paddle.rand([2])  # leave cached gaussians behind
    state = json.loads(json.dumps(rng.get_state()))

    def draws():
        return (random.random(), random.gauss(0, 1), np.random.randn(3).tolist(),
                np.random.normal(), paddle.rand([4]).numpy().tolist())

    expected = draws()
    rng.seed_everything(123)
    rng.set_state(state)
    assert draws() == expected


def test_directory_is_fsynced_after_the_renames(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync-dir" if os.path.isdir(f"/proc/self/fd/{fd}") else "fsync", fd))
        return real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", os.path.basename(dst)))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    for _ in range(2):  # the second save also moves the previous set to its backup
        ckpt.write_set(str(tmp_path), "latest", {".pdparams": {"w": np.zeros(2, "float32")}},
                       {"epoch": 0})
        last_rename = max(i for i, e in enumerate(events) if e == ("replace", "latest.pdstates"))
        assert ("fsync-dir" in [kind for kind, _ in events[last_rename:]]), events
        events.clear()


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    """30 training images in batches of 4 (the last holds 2), one epoch, no evaluation."""
    tmp = tmp_path_factory.mktemp("run")
    path = tiny_config(tmp, tmp / "shapes", train_size=30, epochs=1,
                       **{"Global.eval_during_train": False,
                          "DataLoader.Train.sampler.drop_last": False})
    summary = run(build_trainer(get_config(path)))
    return path, tmp / "out/VisionTransformer", summary


def test_pdstates_is_json_and_best_metric_is_none_before_any_evaluation(short_run):
    path, out, summary = short_run
    assert summary["best_top1"] is None and summary["global_step"] == 8
    with open(out / "latest.pdstates") as f:
        states = json.load(f)  # plain JSON: no pickle, nothing but the standard library
    assert states["best_top1"] is None and states["best_epoch"] is None
    assert set(states["rng"][0]) == {"python", "numpy", "paddle"}
    resumed = build_trainer(get_config(path, [f"Global.checkpoint={out / 'latest'}",
                                              "Global.epochs=2"]))
    log = open(out / "train.log").read()
    line = [x for x in log.splitlines() if "resumed from" in x][-1]
    assert line.endswith(": epoch 1, step 8, no evaluation yet"), line
    assert resumed.best_top1 is None and resumed.global_step == 8


def test_throughput_counts_the_images_that_exist(short_run):
    _, out, summary = short_run
    assert summary["images"] == 30  # 7 batches of 4 and one of 2, not 8 x 4
    log = open(out / "train.log").read()
    assert "[Iter: 8/8]" in log and "no evaluation;" in log


def test_evaluation_builds_no_training_parts(short_run, monkeypatch):
    path, out, _ = short_run
    modes = []
    real = build.build_dataloader

    def recording(section, mode, *a, **k):
        modes.append(mode)
        return real(section, mode, *a, **k)

    def forbidden(*a, **k):
        raise AssertionError("evaluation built a training part")

    monkeypatch.setattr(build, "build_dataloader", recording)
    for name in ("build_optimizer", "build_lr_scheduler", "OptimWrapper"):
        monkeypatch.setattr(build, name, forbidden)
    result = evaluate(get_config(path, [f"Global.pretrained_model={out / 'latest'}"]))
    assert modes == ["eval"] and set(result) == {"loss", "top1", "top2"}
