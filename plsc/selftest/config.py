"""The selftest's training configs: a 2-block ViT on 16 px SyntheticShapes (generated locally,
nothing is downloaded), written as an ordinary plsc YAML so that every run goes through the
same entry points as a user's (get_config -> build_trainer -> run, or tools/train.py)."""
import os

import yaml

# AdamW with epsilon 1e-4 and no clipping, warmup or random flip: equivalence runs must differ by
# float rounding only. A ViT's key bias has a gradient that is zero in exact arithmetic, and
# with Adam's usual epsilon 1e-8 the float noise of that zero becomes a full-size update.
NORMALIZE = [{"DecodeImage": {"to_rgb": True}},
             {"NormalizeImage": {"scale": "1.0/255.0", "mean": [0.5, 0.5, 0.5],
                                 "std": [0.5, 0.5, 0.5], "order": ""}},
             {"ToCHWImage": None}]


def tiny_vit(attn_impl="auto"):
    return {"name": "VisionTransformer", "img_size": 16, "patch_size": 4, "embed_dim": 32,
            "depth": 2, "num_heads": 2, "class_num": 4, "attn_impl": attn_impl}


# epochs: more than `steps` need at any world size; max_train_step ends the run.
def train_config(run_dir, data_root, device, batch_size=4, steps=3, model=None,
                 name="selftest.yaml", **sections):
    """Write `run_dir/<name>` and return its path. `sections`: top-level sections to
    add or replace (FP16={...}, DistributedStrategy={...}, Optimizer={...})."""
    dataset = {"name": "SyntheticShapes", "root": str(data_root), "split": "train",
               "class_num": 4, "num_train": 64, "num_val": 8, "image_size": 16, "seed": 0,
               "transform_ops": NORMALIZE}
    cfg = {
        "Global": {"output_dir": os.path.join(str(run_dir), "out"), "device": device,
                   "epochs": 10, "max_train_step": steps, "print_batch_step": 1, "seed": 7,
                   "eval_during_train": False},
        "Model": model or tiny_vit(),
        "Loss": {"Train": [{"CELoss": {"weight": 1.0}}]},
        "LRScheduler": {"name": "ViTLRScheduler", "learning_rate": 0.01, "decay_type": "cosine",
                        "warmup_steps": 0},
        "Optimizer": {"name": "AdamW", "weight_decay": 0.05, "epsilon": 1e-4, "grad_clip": None},
        "DataLoader": {"Train": {
            "dataset": dataset,
            "sampler": {"name": "DistributedBatchSampler", "batch_size": batch_size,
                        "drop_last": True, "shuffle": True},
            "loader": {"num_workers": 0}}},
    }
    cfg.update(sections)
    os.makedirs(str(run_dir), exist_ok=True)
    path = os.path.join(str(run_dir), name)
    with open(path, "w") as f:
        yaml.safe_dump(cfg, f, sort_keys=False)
    return path


def weights_file(run_dir, prefix="latest"):
    return os.path.join(str(run_dir), "out", "VisionTransformer", prefix + ".pdparams")
