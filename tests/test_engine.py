"""Engine equivalences: data parallel, gradient accumulation, resume, exact eval, atomic saves.

Every comparison is between two runs of the real engine that must agree for a reason
(same global batch, same data order, same RNG), so a bug on either side shows up as a diff.
"""
import os
import re

import numpy as np
import paddle
import pytest

from plsc.config import get_config
from plsc.engine import build_trainer, run
from plsc.engine import checkpoint as ckpt
from plsc.errors import TrainingError
from tiny import launch_two_nodes, run_tool, tiny_config, worker_logs


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return tmp_path_factory.mktemp("shapes")


def params(out_dir, prefix="latest"):
    return paddle.load(os.path.join(out_dir, "VisionTransformer", prefix + ".pdparams"))


def max_diff(a, b):
    assert a.keys() == b.keys()
    return max(float(np.abs(np.asarray(a[k]) - np.asarray(b[k])).max()) for k in a)


def train(path, *overrides):
    cfg = get_config(path, list(overrides))
    trainer = build_trainer(cfg)
    run(trainer)
    return trainer


def test_accum_2_equals_double_batch(tmp_path, data_root):
    a = tiny_config(tmp_path / "a", data_root, batch_size=8, **{"Global.accum_steps": 2,
                                                                "Global.max_train_step": 3})
    b = tiny_config(tmp_path / "b", data_root, batch_size=8, **{"Global.max_train_step": 3})
    ea, eb = train(a), train(b)
    assert ea.global_step == eb.global_step == 3
    assert max_diff(params(tmp_path / "a/out"), params(tmp_path / "b/out")) <= 1e-5
    # ...and the run really changed the weights (otherwise equality proves nothing)
    init = build_trainer(get_config(b)).model.state_dict()
    assert max_diff(params(tmp_path / "b/out"), {k: v.numpy() for k, v in init.items()}) > 1e-3


def test_resume_mid_epoch_equals_uninterrupted(tmp_path, data_root):
    # 32 train images / batch 4 = 8 steps per epoch: stop at 3 (mid-epoch 1), resume to 11
    # (mid-epoch 2): the resumed run must cross the epoch boundary and its eval exactly as before.
    # AdamW (moments to restore), dropout and random flips (RNG and data order to restore)
    adamw = {"name": "AdamW", "weight_decay": 0.1,
             "grad_clip": {"name": "ClipGradByGlobalNorm", "clip_norm": 1.0}}
    full = tiny_config(tmp_path / "full", data_root, **{"Global.max_train_step": 11,
                                                        "Model.drop_rate": 0.1, "Optimizer": adamw})
    part = tiny_config(tmp_path / "part", data_root, **{"Global.max_train_step": 3,
                                                        "Model.drop_rate": 0.1, "Optimizer": adamw})
    e_full = train(full)
    train(part)
    out = tmp_path / "part/out/VisionTransformer"
    opt = paddle.load(str(out / "latest.pdopt"))
    assert any(k.startswith("blocks.0.attn.qkv.weight_moment1") for k in opt["optimizer"]), \
        "optimizer state must be keyed by structured parameter names"
    e_res = train(part, f"Global.checkpoint={out / 'latest'}", "Global.max_train_step=11")
    assert e_res.global_step == 11 and e_res.epoch == e_full.epoch == 1
    assert max_diff(params(tmp_path / "full/out"), params(tmp_path / "part/out")) == 0.0
    assert e_res.best_top1 == e_full.best_top1
    assert abs(e_res.lr_scheduler.get_lr() - e_full.lr_scheduler.get_lr()) == 0.0


def test_data_parallel_2_procs_equals_1_proc_double_batch(tmp_path, data_root):
    dp = tiny_config(tmp_path / "dp", data_root, batch_size=4, **{"Global.max_train_step": 3})
    single = tiny_config(tmp_path / "single", data_root, batch_size=8,
                         **{"Global.max_train_step": 3})
    r = run_tool("train", ["-c", dp], nproc=2, log_dir=tmp_path / "logs")
    assert r.returncode == 0, r.stdout + r.stderr + worker_logs(tmp_path / "logs")
    train(single)
    assert max_diff(params(tmp_path / "dp/out"), params(tmp_path / "single/out")) <= 1e-5


def test_eval_exact_over_uneven_shards(tmp_path, data_root):
    """13 eval images on 2 processes: the union of shards is the dataset once, so the metrics
    equal the single-process ones (PLSC counts the padded repeats)."""
    path = tiny_config(tmp_path, data_root, **{"Global.max_train_step": 2})
    train(path)
    weights = str(tmp_path / "out/VisionTransformer/latest")
    one = run_tool("eval", ["-c", path, "-o", f"Global.pretrained_model={weights}"])
    two = run_tool("eval", ["-c", path, "-o", f"Global.pretrained_model={weights}"], nproc=2,
                   log_dir=tmp_path / "logs")
    assert one.returncode == 0, one.stderr
    assert two.returncode == 0, two.stderr + worker_logs(tmp_path / "logs")
    line1 = re.search(r"^eval: .*$", one.stdout, re.M).group(0)
    line2 = re.search(r"^eval: .*$", two.stdout + worker_logs(tmp_path / "logs"), re.M).group(0)
    assert line1 == line2
    assert "(13 images" in one.stdout


def test_two_nodes_over_loopback(tmp_path, data_root):
    """Two launches with --nnodes 2 rendezvous on 127.0.0.1 and train like one process x 2b."""
    nodes = tiny_config(tmp_path / "nodes", data_root, batch_size=4, **{"Global.max_train_step": 2})
    single = tiny_config(tmp_path / "single", data_root, batch_size=8,
                         **{"Global.max_train_step": 2})
    assert launch_two_nodes(tmp_path, nodes) == [0, 0], worker_logs(tmp_path / "log0") + \
        worker_logs(tmp_path / "log1")
    train(single)
    assert max_diff(params(tmp_path / "nodes/out"), params(tmp_path / "single/out")) <= 1e-5


def _trained_then_changed(tmp_path, data_root):
    path = tiny_config(tmp_path, data_root, **{"Global.max_train_step": 2})
    engine = train(path)
    out = tmp_path / "out/VisionTransformer"
    before = params(tmp_path / "out")
    for p in engine.model.parameters():  # what a later save would write
        p.set_value(p.numpy() + 1.0)
    engine.state.global_step += 1
    return engine, out, before


def test_crash_while_writing_keeps_previous_checkpoint(tmp_path, data_root, monkeypatch):
    engine, out, before = _trained_then_changed(tmp_path, data_root)
    real_dump = ckpt._dump

    def dying_dump(obj, path):  # writes half a file, then the process dies
        if ".pdopt" in path:
            with open(path, "wb") as f:
                f.write(b"\x80\x04partial")
            raise KeyboardInterrupt("killed while saving")
        return real_dump(obj, path)

    monkeypatch.setattr(ckpt, "_dump", dying_dump)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save(engine, "latest")
    monkeypatch.undo()
    assert not [f for f in os.listdir(out) if ".tmp-" in f], "temporary files must be cleaned"
    p, _, st = ckpt.load_resume(str(out / "latest"))
    assert st["global_step"] == 2 and max_diff(p, before) == 0.0


def test_crash_between_renames_falls_back_to_previous_set(tmp_path, data_root, monkeypatch):
    engine, out, before = _trained_then_changed(tmp_path, data_root)
    real_replace = os.replace
    calls = []

    def dying_replace(src, dst):
        if dst.endswith("latest.pdopt"):  # .pdparams is already new, .pdopt/.pdstates old
            raise KeyboardInterrupt("killed between renames")
        calls.append(dst)
        return real_replace(src, dst)

    monkeypatch.setattr(ckpt.os, "replace", dying_replace)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save(engine, "latest")
    monkeypatch.undo()
    assert str(out / "latest.pdparams") in calls
    assert "torn save" in ckpt.torn_reason(str(out / "latest"))
    warnings = []
    p, _, st = ckpt.load_resume(str(out / "latest"), log=warnings.append)
    assert st["global_step"] == 2 and max_diff(p, before) == 0.0
    assert "using the previous checkpoint" in warnings[0]
    # and a later successful save leaves one consistent set and no backup behind
    ckpt.save(engine, "latest")
    assert ckpt.torn_reason(str(out / "latest")) is None
    assert not [f for f in os.listdir(out) if f.startswith(".latest.bak")]


def test_checkpoint_files_and_retention(tmp_path, data_root):
    path = tiny_config(tmp_path, data_root, epochs=3, **{"Global.max_num_latest_checkpoint": 2})
    e = train(path)
    out = tmp_path / "out/VisionTransformer"
    names = sorted(os.listdir(out))
    for prefix in ("latest", "best_model", "epoch_2", "epoch_3"):
        for ext in ckpt.EXTS:
            assert prefix + ext in names
    assert "epoch_1.pdparams" not in names  # only the newest 2 are kept
    assert "config.yaml" in names and "train.log" in names
    st = ckpt.load_states(str(out / "latest"))
    assert st["epoch"] == 3 and st["global_step"] == 24 and st["best_top1"] == e.best_top1
    log = open(out / "train.log").read()
    assert re.search(r"\[Train\]\[Epoch 1/3\]\[Iter: 1/8\]lr: [\d.e-]+, loss: [\d.]+, top1: [\d.]+, "
                     r"top2: [\d.]+, batch_cost: [\d.]+s, reader_cost: [\d.]+s, ips: [\d.]+ "
                     r"images/sec, eta: \d+:\d\d:\d\d", log)
    assert re.search(r"\[Eval\]\[Epoch 3\]\[Avg\]loss: [\d.]+, top1: [\d.]+, top2: [\d.]+ "
                     r"\(13 images", log)
    assert "[Train] finished: 24 steps, 3 epoch(s)" in log


def test_nan_loss_stops_after_max_nan_steps(tmp_path, data_root):
    # std 0 makes every pixel inf, so the loss is NaN from the first step
    path = tiny_config(tmp_path, data_root, **{"Global.max_nan_steps": 2})
    cfg = get_config(path, ["DataLoader.Train.dataset.transform_ops.2.NormalizeImage.std=[0,0,0]"])
    engine = build_trainer(cfg)
    before = {k: v.numpy().copy() for k, v in engine.model.state_dict().items()}
    with pytest.raises(TrainingError, match=r"loss was NaN/inf for 2 consecutive steps "
                                            r"\(Global.max_nan_steps\) at epoch 1, step 1"):
        run(engine)
    after = {k: v.numpy() for k, v in engine.model.state_dict().items()}
    assert max_diff(before, after) == 0.0  # skipped steps never touched the weights


def test_batch_larger_than_dataset_is_one_clear_error(tmp_path, data_root):
    path = tiny_config(tmp_path, data_root, batch_size=64)
    r = run_tool("train", ["-c", path])
    assert r.returncode == 2
    err = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert err == ["error: DataLoader.Train: 32 samples make 0 micro-batch(es) of 64 per device on 1 "
                   "device(s); accum_steps=1 needs at least that many: lower the batch size or "
                   "accum_steps"]
    assert "Traceback" not in r.stderr


def test_fp16_o2_config_on_cpu_warns_once_and_trains_in_fp32(tmp_path, data_root, caplog):
    fp16 = tiny_config(tmp_path / "fp16", data_root, **{"Global.max_train_step": 2,
                                                        "FP16.level": "O2"})
    fp32 = tiny_config(tmp_path / "fp32", data_root, **{"Global.max_train_step": 2})
    e = train(fp16)
    log = open(tmp_path / "fp16/out/VisionTransformer/train.log").read()
    assert log.count("AMP is off") == 1 and "FP16.level=O2 needs a GPU build" in log
    assert not e.optim.precision.enabled and e.optim.precision.scaler is None
    train(fp32)
    assert max_diff(params(tmp_path / "fp16/out"), params(tmp_path / "fp32/out")) == 0.0
    assert all(np.asarray(v).dtype == np.float32 for v in params(tmp_path / "fp16/out").values())


def test_config_without_seed_runs_and_visualdl_scalars_are_written(tmp_path, data_root):
    path = tiny_config(tmp_path, data_root, **{"Global.max_train_step": 2, "Global.seed": None,
                                               "Global.use_visualdl": True})
    e = train(path)
    assert e.global_step == 2 and isinstance(e.seed, int)
    st = ckpt.load_states(str(tmp_path / "out/VisionTransformer/latest"))
    assert st["seed"] == e.seed  # recorded, so a resume continues the same data order
    vdl = tmp_path / "out/vdl"
    assert vdl.is_dir() and any(f.startswith("vdlrecords") for f in os.listdir(vdl))


def test_temp_files_of_a_process_killed_mid_write_are_removed_by_the_next_save(tmp_path, data_root):
    path = tiny_config(tmp_path, data_root, **{"Global.max_train_step": 1})
    engine = train(path)
    out = tmp_path / "out/VisionTransformer"
    stale = out / "latest.tmp-999999.pdopt"  # what SIGKILL during paddle.save leaves behind
    stale.write_bytes(b"\x80\x04partial")
    ckpt.save(engine, "latest")
    assert not stale.exists()
    assert ckpt.torn_reason(str(out / "latest")) is None


def test_batch_size_is_split_into_accum_micro_batches_and_must_divide(tmp_path, data_root):
    # PLSC's meaning: batch_size per device per optimizer step, split into accum_steps pieces
    path = tiny_config(tmp_path, data_root, batch_size=6, **{"Global.accum_steps": 4})
    r = run_tool("train", ["-c", path])
    assert r.returncode == 2 and "Traceback" not in r.stderr
    err = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert err == ["error: DataLoader.Train.sampler.batch_size: 6 is the batch per device per "
                   "optimizer step (PLSC's meaning), split into Global.accum_steps=4 micro-batches: "
                   "expected a multiple of 4"]
    ok = tiny_config(tmp_path / "ok", data_root, batch_size=8, **{"Global.accum_steps": 4,
                                                                   "Global.max_train_step": 1})
    r = run_tool("train", ["-c", ok])
    assert r.returncode == 0, r.stderr
    assert "global batch 8 (8 per device in 4 micro-batches of 2, 1 device(s))" in r.stdout + r.stderr
