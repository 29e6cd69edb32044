"""The shipped configs, the CLIs' error contract, and README/CI consistency."""
import glob
import os
import re

import pytest
import yaml

from plsc.config import get_config
from tiny import ROOT, run_tool

CONFIGS = sorted(glob.glob(os.path.join(ROOT, "configs", "**", "*.yaml"), recursive=True))
NAMED = [c for c in CONFIGS if "_base_" not in c]


@pytest.mark.parametrize("path", NAMED, ids=os.path.basename)
def test_named_config_validates_and_names_a_real_model(path):
    from plsc.flops import count_params, model_spec
    from plsc.registry import MODELS

    cfg = get_config(path)
    assert cfg.Model.name in MODELS
    assert count_params(model_spec(dict(cfg.Model))) > 100_000
    name = os.path.basename(path)
    if "fp16o2" in name:
        assert cfg.FP16.level == "O2"
    m = re.search(r"_(\d+)n(\d+)c_", name)
    assert m, f"{name} does not follow <model>_..._<N>n<C>c_<dp>_<precision>.yaml"


def test_plsc_recipe_values_survive_layering():
    cfg = get_config(os.path.join(ROOT, "configs/ViT_base_patch16_224_in1k_1n8c_dp_fp16o2.yaml"))
    assert cfg.LRScheduler.learning_rate == 3e-3 and isinstance(cfg.LRScheduler.learning_rate, float)
    assert cfg.Optimizer.betas == [0.9, 0.999]
    # PLSC's meaning: batch_size per device per optimizer step, split into accum_steps micro-batches
    assert cfg.DataLoader.Train.sampler.batch_size * 8 == 4096 and cfg.Global.accum_steps == 2
    norm = cfg.DataLoader.Train.dataset.transform_ops[3].NormalizeImage
    assert norm.scale == pytest.approx(1 / 255)
    assert cfg.DataLoader.Train.dataset.transform_ops[4] == {"ToCHWImage": None}
    ft = get_config(os.path.join(ROOT, "configs/ViT_base_patch16_384_ft_cifar100_1n8c_dp_fp16o2.yaml"))
    assert ft.Model.class_num == 100 and ft.LRScheduler.learning_rate == 0.03
    assert ft.DataLoader.Train.dataset.name == "CIFAR100"
    assert ft.Optimizer.grad_clip.clip_norm == 1.0 and ft.Optimizer.weight_decay == 0.0


def test_print_config_prints_the_resolved_config():
    path = os.path.join(ROOT, "configs/ViT_base_patch16_224_in1k_1n8c_dp_fp16o2.yaml")
    r = run_tool("train", ["-c", path, "-o", "Global.epochs=3",
                           "DataLoader.Train.dataset.transform_ops.1.RandCropImage.size=192",
                           "Global.output_dir=id", "--print-config"])
    assert r.returncode == 0, r.stderr
    cfg = yaml.safe_load(r.stdout)
    assert cfg["Global"]["epochs"] == 3 and cfg["Global"]["output_dir"] == "id"
    assert cfg["DataLoader"]["Train"]["dataset"]["transform_ops"][1]["RandCropImage"]["size"] == 192
    assert "_base_:" not in r.stdout


@pytest.mark.parametrize("args, message", [
    (["-o", "Global.epohcs=3"],
     "error: unknown key 'Global.epohcs' (from -o Global.epohcs=3); did you mean 'Global.epochs'?"),
    (["-o", "Global.epochs=ten"],
     "error: Global.epochs: expected int >= 1, got str 'ten' (from -o Global.epochs=ten)"),
    (["-o", "Model.name=ViT_base_patch16_22"],
     "error: Model.name: unknown model 'ViT_base_patch16_22' (from -o Model.name=ViT_base_patch16_22);"
     " did you mean 'ViT_base_patch16_224'"),
])
def test_cli_config_errors_are_one_line_exit_2(args, message):
    path = os.path.join(ROOT, "configs/ViT_base_patch16_224_in1k_1n8c_dp_fp16o2.yaml")
    r = run_tool("train", ["-c", path, *args])
    assert r.returncode == 2
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(message), r.stderr
    assert "Traceback" not in r.stderr


def test_debug_shows_the_traceback():
    path = os.path.join(ROOT, "configs/ViT_base_patch16_224_in1k_1n8c_dp_fp16o2.yaml")
    r = run_tool("train", ["-c", path, "-o", "Global.epochs=ten", "--debug"])
    assert r.returncode != 0 and "Traceback" in r.stderr


def test_missing_dataset_is_one_line(tmp_path):
    path = os.path.join(ROOT, "configs/ViT_base_patch16_224_in1k_1n8c_dp_fp16o2.yaml")
    r = run_tool("train", ["-c", path, "-o", "Global.device=cpu",
                           f"Global.output_dir={tmp_path}", "Model.name=ViT_tiny_patch16_224"])
    assert r.returncode == 2
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "./dataset/ILSVRC2012/" in errors[0], r.stderr
    assert "Traceback" not in r.stderr
    # fp16 O2 on a CPU-only Paddle: exactly one warning, before the data error
    assert r.stdout.count("AMP is off") + r.stderr.count("AMP is off") <= 1


def test_ci_runs_the_readme_test_command():
    readme = open(os.path.join(ROOT, "README.md")).read()
    blocks = re.findall(r"```bash\n(.*?)\n```", readme, re.S)
    test_cmd = [b for b in blocks if "pytest" in b]
    assert len(test_cmd) == 1
    ci = open(os.path.join(ROOT, ".ci", "run")).read()
    assert test_cmd[0].strip() in ci.splitlines()
