"""The DeiT-B/16 recipe's training sections, as PLSC publishes them
(task/classification/deit/configs/DeiT_base_patch16_224_in1k_1n8c_dp_fp16o2.yaml), run
through tools/train.py on the tiny config: only the batch size (128 per GPU) and class_num
(1000) are brought down to the tiny dataset."""
import math
import re

import yaml

from tiny import run_tool, tiny_config

PUBLISHED = yaml.safe_load("""
LRScheduler:
    name: TimmCosine
    learning_rate: 1e-3
    eta_min: 1e-5
    warmup_epoch: 5
    warmup_start_lr: 1e-6
    decay_unit: epoch

Optimizer:
  name: AdamW
  betas: (0.9, 0.999)
  eps: 1e-8
  weight_decay: 0.05
  no_weight_decay_name: ["cls_token", "pos_embed", "norm", "bias"]
  use_master_param: True
  exp_avg_force_fp32: True

batch_transform_ops:
  - TransformOpSampler:
      Mixup:
        alpha: 0.8
        prob: 0.5
        epsilon: 0.1
        class_num: 1000
      Cutmix:
        alpha: 1.0
        prob: 0.5
        epsilon: 0.1
        class_num: 1000

sampler:
  name: RepeatedAugSampler
  batch_size: 128
  drop_last: False
  shuffle: True
""")


def test_published_deit_sections_train_with_timm_cosine_per_epoch(tmp_path):
    ops = PUBLISHED["batch_transform_ops"]
    for op in ops[0]["TransformOpSampler"].values():
        op["class_num"] = 4
    path = tiny_config(tmp_path, tmp_path / "shapes", epochs=3, **{
        "LRScheduler": PUBLISHED["LRScheduler"], "Optimizer": PUBLISHED["Optimizer"],
        "DataLoader.Train.sampler": dict(PUBLISHED["sampler"], batch_size=4),
        "DataLoader.Train.dataset.batch_transform_ops": ops})
    r = run_tool("train", ["-c", path])
    assert r.returncode == 0, r.stdout + r.stderr
    log = open(tmp_path / "out/VisionTransformer/train.log").read()
    # 32 images (< 256: all of them) / batch 4 = 8 steps per epoch; the lr changes per epoch
    lrs = {}
    for epoch, step, lr in re.findall(r"\[Epoch (\d)/3\]\[Iter: (\d)/8\]lr: ([\d.e-]+)", log):
        lrs.setdefault(int(epoch), set()).add(float(lr))
    want = {e: 1e-6 + (e - 1) * (1e-3 - 1e-6) / 5 for e in (1, 2, 3)}  # all three in warmup
    assert {e: len(v) for e, v in lrs.items()} == {1: 1, 2: 1, 3: 1}
    for e, (lr,) in lrs.items():
        assert math.isclose(lr, want[e], rel_tol=1e-5), (e, lr, want[e])
    assert "LRScheduler.warmup_epoch (5 = 40 steps) >= the run's 24 steps: the whole run is " \
        "warmup" in log
