"""PLSC's published DeiT-B/16 YAML (tests/data, every value as PLSC published it) validates with
PLSC's meaning and trains on tiny data with 2 processes, changed only through `-o` overrides."""
import os

import pytest

from plsc.config import get_config
from plsc.data.synthetic import ensure_generated
from tiny import ROOT, run_tool, worker_logs

PLSC_YAML = os.path.join(ROOT, "tests", "data", "plsc_DeiT_base_patch16_224_in1k_1n8c_dp_fp16o2.yaml")


def test_plsc_deit_yaml_validates_with_plsc_values():
    cfg = get_config(PLSC_YAML)
    assert cfg.Model.name == "DeiT_base_patch16_224" and cfg.Model.drop_path_rate == 0.1
    assert cfg.LRScheduler.name == "TimmCosine" and cfg.LRScheduler.learning_rate == 1e-3
    assert cfg.Optimizer.eps == 1e-8 and cfg.Optimizer.betas == [0.9, 0.999]
    ops = [next(iter(op)) for op in cfg.DataLoader.Train.dataset.transform_ops]
    assert ops == ["DecodeImage", "RandCropImage", "RandFlipImage", "TimmAutoAugment",
                   "NormalizeImage", "RandomErasing", "ToCHWImage"]
    erase = cfg.DataLoader.Train.dataset.transform_ops[5].RandomErasing
    assert erase.sh == pytest.approx(1 / 3) and erase.mode == "pixel"
    mix = cfg.DataLoader.Train.dataset.batch_transform_ops[0].TransformOpSampler
    assert mix.Mixup.epsilon == 0.1 and mix.Cutmix.prob == 0.5
    assert cfg.DataLoader.Train.sampler.name == "RepeatedAugSampler"
    # PLSC's meaning of batch_size: per device per optimizer step -> global 1024 on 8 GPUs
    assert cfg.DataLoader.Train.sampler.batch_size * 8 == 1024 and cfg.Global.accum_steps == 1


def test_plsc_deit_yaml_trains_two_steps_on_two_processes(tmp_path):
    data = tmp_path / "shapes"
    ensure_generated(str(data), 4, 16, 8, 48, 0)  # 16 + 8 JPEGs of 48 px, 4 classes
    overrides = [
        "Global.device=cpu", f"Global.output_dir={tmp_path / 'out'}", "Global.max_train_step=2",
        "Global.eval_during_train=False", "Global.print_batch_step=1",
        f"DataLoader.Train.dataset.image_root={data}",
        f"DataLoader.Train.dataset.cls_label_path={data / 'train_list.txt'}",
        "DataLoader.Train.sampler.batch_size=2", "DataLoader.Train.loader.num_workers=0",
        f"DataLoader.Eval.dataset.image_root={data}",
        f"DataLoader.Eval.dataset.cls_label_path={data / 'val_list.txt'}",
    ]
    r = run_tool("train", ["-c", PLSC_YAML, "-o", *overrides], nproc=2, log_dir=tmp_path / "logs",
                 timeout=600)
    logs = worker_logs(tmp_path / "logs")
    assert r.returncode == 0, r.stdout + r.stderr + logs
    log = open(tmp_path / "out" / "DeiT_base_patch16_224" / "train.log").read()
    steps = [line for line in log.splitlines() if "[Train][Epoch" in line and "loss" in line]
    assert len(steps) == 2, log
    assert "global batch 4 (2 per device, 2 device(s))" in log
    assert "Traceback" not in logs
