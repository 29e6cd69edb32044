"""A tiny but complete training config for engine tests: a 2-block ViT on 16px SyntheticShapes."""
import os
import socket
import subprocess
import sys

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(tmp_path, data_root, train_size=32, val_size=13, batch_size=4, epochs=2, **extra):
    transform = [
        {"DecodeImage": {"to_rgb": True}},
        {"RandFlipImage": {"flip_code": 1}},
        {"NormalizeImage": {"scale": "1.0/255.0", "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5],
                            "order": ""}},
        {"ToCHWImage": None},
    ]

    def dataset(split):
        return {"name": "SyntheticShapes", "root": str(data_root), "split": split,
                "class_num": 4, "num_train": train_size, "num_val": val_size,
                "image_size": 16, "seed": 0,
                "transform_ops": transform if split == "train" else transform[:1] + transform[2:]}

    cfg = {
        "Global": {"output_dir": str(tmp_path / "out"), "device": "cpu", "epochs": epochs,
                   "print_batch_step": 1, "seed": 7, "eval_during_train": True},
        "Model": {"name": "VisionTransformer", "img_size": 16, "patch_size": 4, "embed_dim": 32,
                  "depth": 2, "num_heads": 2, "class_num": 4},
        "Loss": {"Train": [{"CELoss": {"weight": 1.0}}], "Eval": [{"CELoss": {"weight": 1.0}}]},
        "Metric": {"Train": [{"TopkAcc": {"topk": [1, 2]}}], "Eval": [{"TopkAcc": {"topk": [1, 2]}}]},
        "LRScheduler": {"name": "ViTLRScheduler", "learning_rate": 0.1, "decay_type": "cosine",
                        "warmup_steps": 2},
        # Momentum by default: equivalence tests compare runs whose gradients differ by float
        # rounding only, and SGD keeps that rounding small where Adam's first steps (~sign(g))
        # amplify it for near-zero gradients.
        "Optimizer": {"name": "Momentum", "momentum": 0.9, "weight_decay": 1e-4,
                      "grad_clip": {"name": "ClipGradByGlobalNorm", "clip_norm": 1.0}},
        "DataLoader": {
            "Train": {"dataset": dataset("train"),
                      "sampler": {"name": "DistributedBatchSampler", "batch_size": batch_size,
                                  "drop_last": True, "shuffle": True},
                      "loader": {"num_workers": 0}},
            "Eval": {"dataset": dataset("val"),
                     "sampler": {"name": "DistributedBatchSampler", "batch_size": 5,
                                 "drop_last": False, "shuffle": False},
                     "loader": {"num_workers": 0}},
        },
    }
    for key, value in extra.items():  # "Global.accum_steps": 2
        node = cfg
        *path, last = key.split(".")
        for p in path:
            node = node.setdefault(p, {})
        node[last] = value
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return str(path)


def run_tool(tool, args, nproc=1, timeout=300, log_dir=None, extra_launch=()):
    """Run tools/<tool>.py (under paddle.distributed.launch when nproc > 1)."""
    cmd = [sys.executable]
    if nproc > 1 or extra_launch:
        cmd += ["-m", "paddle.distributed.launch", "--nproc_per_node", str(nproc),
                "--log_dir", str(log_dir or "/tmp/plsc_launch_logs"), *extra_launch]
    cmd += [os.path.join(ROOT, "tools", f"{tool}.py"), *args]
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)


def worker_logs(log_dir):
    """The tails of a launch's worker logs, for assertion messages."""
    text = ""
    for name in sorted(os.listdir(log_dir)) if os.path.isdir(log_dir) else []:
        text += open(os.path.join(log_dir, name), errors="replace").read()[-3000:]
    return text


def launch_two_nodes(tmp_path, config, timeout=240):
    """Train `config` as two 1-process nodes rendezvousing on 127.0.0.1 (logs in tmp_path/log0,
    log1); returns both launchers' exit codes."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, PYTHONPATH=ROOT)
    procs = [subprocess.Popen(
        [sys.executable, "-m", "paddle.distributed.launch", "--nnodes", "2", "--master",
         f"127.0.0.1:{port}", "--rank", str(rank), "--nproc_per_node", "1", "--log_dir",
         str(tmp_path / f"log{rank}"), os.path.join(ROOT, "tools/train.py"), "-c", config],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=ROOT) for rank in (0, 1)]
    try:
        for p in procs:
            p.wait(timeout=timeout)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return [p.returncode for p in procs]
