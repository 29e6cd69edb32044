"""plsc-benchmark / tools/benchmark.py: measured speed, printed, with baselines from the same run.

    python tools/benchmark.py train --model ViT_tiny_patch16_224 --batch-size 32 --steps 10
        training images/s of the engine, and of a bare Paddle loop over the same model, batch,
        loss, optimizer and clipping; prints the engine's overhead in percent (target: < 3%).
        --against timm [--timm-python PATH]: also timm + PyTorch (run by that python, see
        plsc/cli/bench_timm.py) on the same model, step and thread count; --to-static.
    python tools/benchmark.py inference --model ViT_tiny_patch16_224 --batch-size 8
        inference images/s of the dygraph model, the exported fp32 predictor (oneDNN) and the
        bf16 predictor where the CPU supports it, with ratios vs dygraph.
    python tools/benchmark.py eval --model ViT_tiny_patch16_224 --images 64
        evaluation inside training vs tools/eval.py (and its --exported fast path), same data.
    python tools/benchmark.py memory [--models ...] [--batch-sizes 4 16]
        the memory planner's estimate vs the measured peak of one training step (CPU, fp32).
    python tools/benchmark.py data --images 64 --rounds 9
        images/s of one loader worker running the DeiT training transforms, next to a plain
        Pillow pipeline of the same steps (plsc/cli/bench_data.py).
Other sections live beside these; `--help` lists them.
"""
import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

from .bench_data import add_parser as add_data_parser, bench_data
from .bench_eval import add_parser as add_eval_parser, bench_eval
from .bench_memory import add_parser as add_memory_parser, bench_memory
from .common import run, use_all_cores


def _train_config(model, batch_size, img_size, out_dir, to_static=False):
    return {
        "Global": {"output_dir": out_dir, "device": "cpu", "epochs": 1, "print_batch_step": 10**9,
                   "seed": 0, "eval_during_train": False, "to_static": to_static},
        "Model": {"name": model, "class_num": 1000, "img_size": img_size},
        "Loss": {"Train": [{"CELoss": {"weight": 1.0}}]},
        "LRScheduler": {"name": "ViTLRScheduler", "learning_rate": 1e-3, "warmup_steps": 0},
        "Optimizer": {"name": "AdamW", "weight_decay": 0.05,
                      "grad_clip": {"name": "ClipGradByGlobalNorm", "clip_norm": 1.0}},
        "DataLoader": {"Train": {
            "dataset": {"name": "SyntheticShapes", "root": os.path.join(out_dir, "shapes"),
                        "class_num": 4, "num_train": batch_size, "num_val": 4,
                        "image_size": 32, "transform_ops": [{"DecodeImage": None}]},
            "sampler": {"name": "DistributedBatchSampler", "batch_size": batch_size,
                        "drop_last": True}}},
    }


def bench_train(args):
    """Per model: the engine's step, a bare Paddle loop over the same parts and, with
    `--against timm`, timm + PyTorch's step on the same model, batch, loss, optimizer, clipping
    and thread count, all interleaved round by round."""
    from .bench_timm import VENV_HINT, find_timm_python

    threads = int(os.environ.get("OMP_NUM_THREADS") or 1)
    timm_python = None
    if args.against == "timm":
        timm_python = find_timm_python(args.timm_python)
        if timm_python is None:
            print(f"timm comparison skipped: torch/timm not importable here (set them up with "
                  f"`{VENV_HINT}` and pass --timm-python /work/venv-timm/bin/python)")
    for model in args.model:
        _bench_train_model(args, model, threads, timm_python)


def _paddle_runners(args, model_name, tmp):
    """{'bare': step, 'engine': step} for one model, sharing the model's parameters; the run's
    files go to the directory `tmp`."""
    import numpy as np
    import paddle
    import yaml

    from ..config import get_config
    from ..engine import build_trainer
    from ..engine.loop import run_iter
    from ..loss import build_loss
    from ..optim import build_lr_scheduler, build_optimizer

    path = os.path.join(tmp, "bench.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(_train_config(model_name, args.batch_size, args.img_size, tmp,
                                     args.to_static), f)
    cfg = get_config(path)
    trainer = build_trainer(cfg)
    trainer.logger.setLevel("WARNING")
    rng = np.random.default_rng(0)
    images = paddle.to_tensor(rng.standard_normal(
        (args.batch_size, 3, args.img_size, args.img_size)).astype("float32"))
    labels = paddle.to_tensor(rng.integers(0, 1000, args.batch_size).astype("int64"))
    # A bare Paddle step: same model, loss, optimizer, clipping and LR schedule.
    model = trainer.dp_model
    loss_fn = build_loss(cfg.Loss.Train)
    lr_scheduler = build_lr_scheduler(dict(cfg.LRScheduler), 1, 10**6)
    opt, clip = build_optimizer(dict(cfg.Optimizer), lr_scheduler, trainer.model)
    params = [p for p in trainer.model.parameters() if not p.stop_gradient]

    def bare_step():
        loss_fn(model(images), labels)["loss"].backward()
        clip(params)
        opt.step()
        opt.clear_grad()
        lr_scheduler.step()

    # The engine's own train step, fed from memory so that only the step itself is compared.
    return {"bare": bare_step, "engine": lambda: run_iter(trainer, images, labels)}


def _bench_train_model(args, model_name, threads, timm_python):
    from .bench_timm import TimmWorker, timm_name

    tmp = tempfile.mkdtemp(prefix="plsc-bench-")
    runners = _paddle_runners(args, model_name, tmp)
    worker = None
    if timm_python:
        worker = TimmWorker(timm_python, timm_name(model_name), args.batch_size, args.img_size,
                            threads, lr=1e-3, weight_decay=0.05, clip=1.0)
        if worker.hello.get("ok"):
            runners["timm"] = worker.step
        else:
            print(f"timm comparison skipped for {model_name}: {worker.hello.get('error')}")
    try:
        stats = _timed_stats(runners, args.batch_size, args.steps, args.repeats)
    finally:
        if worker is not None:
            worker.close()
        shutil.rmtree(tmp, ignore_errors=True)
    mode = "to_static" if args.to_static else "dygraph"
    print(f"train {model_name} {args.img_size}px batch {args.batch_size} ({mode}), "
          f"{args.steps} steps x {args.repeats} rounds, {threads} thread(s):")
    names = {"bare": "bare paddle loop", "engine": "plsc engine", "timm": "timm + torch"}
    for name, (median, low, high) in stats.items():
        print(f"  {names[name]:<17}: {median:8.2f} images/s  (range {low:.2f}-{high:.2f})")
    bare, eng = stats["bare"][0], stats["engine"][0]
    print(f"  engine overhead  : {100 * (bare / eng - 1):+.2f}%  (target < 3%)")
    if "timm" in stats:
        versions = f"timm {worker.hello['timm']}, torch {worker.hello['torch']}"
        print(f"  plsc / timm      : x{eng / stats['timm'][0]:.2f}  (engine over {versions})")


def _timed_stats(runners, batch_size, steps, repeats):
    """{name: (median, lowest, highest) images/s} of `steps` calls of each runner, interleaved
    over `repeats` rounds (after one warm-up call each) so load drift on a shared machine hits
    all alike."""
    for fn in runners.values():
        fn()
    times = {name: [] for name in runners}
    for _ in range(repeats):
        for name, fn in runners.items():
            t = time.perf_counter()
            for _ in range(steps):
                fn()
            times[name].append(time.perf_counter() - t)
    return {name: (batch_size * steps / statistics.median(ts), batch_size * steps / max(ts),
                   batch_size * steps / min(ts)) for name, ts in times.items()}


def _timed(runners, batch_size, steps, repeats):
    """{name: median images/s} (see _timed_stats)."""
    return {k: v[0] for k, v in _timed_stats(runners, batch_size, steps, repeats).items()}


def bench_inference(args):
    """Inference images/s: dygraph (no_grad), the dygraph model under paddle.jit.to_static
    (Global.to_static), the exported fp32 predictor (oneDNN) and, where the CPU has bf16
    kernels, the bf16 predictor; ratios vs dygraph, and each one's agreement with dygraph."""
    import numpy as np
    import paddle

    from ..apis import bf16_supported, save_inference_model
    from ..models import build_model

    device = "cpu" if args.device is None else args.device
    paddle.set_device(device)
    paddle.seed(0)
    model_cfg = {"name": args.model, "class_num": 1000,
                 **({"img_size": args.img_size} if args.img_size else {})}
    model = build_model(model_cfg)
    model.eval()
    with paddle.no_grad():  # the initial head is zero: random values make the diff meaningful
        head = model.head.weight
        head.set_value(paddle.randn(head.shape, dtype=head.dtype) * 0.02)
    size = int(model.img_size)
    batch = np.random.default_rng(0).standard_normal(
        (args.batch_size, 3, size, size)).astype("float32")
    x = paddle.to_tensor(batch)
    static = build_model(model_cfg)
    static.set_state_dict(model.state_dict())
    static.eval()
    static = paddle.jit.to_static(static, full_graph=True)

    def layer_runner(layer):
        def run_layer():
            with paddle.no_grad():
                return layer(x).numpy()
        return run_layer

    runners = {"dygraph": layer_runner(model), "to_static": layer_runner(static)}
    with tempfile.TemporaryDirectory() as tmp:
        files = save_inference_model(model, os.path.join(tmp, "inference"), (3, size, size))
        precisions = ["fp32"] + (["bf16"] if device == "cpu" and bf16_supported() else [])
        for precision in precisions:
            runners[f"exported {precision}"] = _predictor_runner(files, device, precision,
                                                                  batch)
        expected = runners["dygraph"]()
        agreement = {name: _agreement(fn(), expected) for name, fn in runners.items()}
        ips = _timed_stats(runners, args.batch_size, args.steps, args.repeats)
    threads = os.environ.get("OMP_NUM_THREADS", "?")
    print(f"inference {args.model} {size}px batch {args.batch_size} on {device}, "
          f"{args.steps} batches x {args.repeats} rounds, {threads} thread(s):")
    for name, (value, low, high) in ips.items():
        print(f"  {name:<14}: {value:8.2f} images/s  (range {low:.2f}-{high:.2f})  "
              f"x{value / ips['dygraph'][0]:.2f} vs dygraph  {agreement[name]}")
    if device == "cpu" and not bf16_supported():
        print("  bf16: not supported on this CPU (needs AVX512-BF16 or AMX)")


def _predictor_runner(files, device, precision, batch):
    from ..apis import create_predictor

    predictor = create_predictor(files["model"], files["params"], device, precision)
    handle = predictor.get_input_handle(predictor.get_input_names()[0])
    output = predictor.get_output_handle(predictor.get_output_names()[0])

    def run_predictor():
        handle.reshape(list(batch.shape))
        handle.copy_from_cpu(batch)
        predictor.run()
        return output.copy_to_cpu()
    return run_predictor


def _agreement(logits, expected):
    """'max |logits - dygraph| ..., top-1 agrees on k/n' (accuracy shown next to speed)."""
    import numpy as np

    diff = float(np.abs(logits - expected).max())
    same = int((logits.argmax(-1) == expected.argmax(-1)).sum())
    scale = float(np.abs(expected).max())
    return (f"(max |logits - dygraph| {diff:.1e} of max |logit| {scale:.1e}, "
            f"top-1 same on {same}/{len(expected)})")


def bench_convert(args):
    from ..convert import bench_convert as run_bench

    r = run_bench(log=lambda *a: None)
    print(f"convert ViT-B/16 ({r['params']:,} params, {r['npz_mb']:.0f} MB npz, random weights):")
    print(f"  npz2paddle : {r['npz2paddle_s']:.2f} s in-process, {r['cli_npz2paddle_s']:.2f} s as CLI,"
          f" peak RSS {r['cli_npz2paddle_rss_mb']:.0f} MB")
    print(f"  paddle2npz : {r['paddle2npz_s']:.2f} s in-process, {r['cli_paddle2npz_s']:.2f} s as CLI,"
          f" peak RSS {r['cli_paddle2npz_rss_mb']:.0f} MB")
    print(f"  baseline   : {r['baseline_rss_mb']:.0f} MB peak RSS for `import paddle, plsc.models`;"
          f" conversion adds {r['cli_npz2paddle_rss_mb'] - r['baseline_rss_mb']:.0f} MB"
          f" ({(r['cli_npz2paddle_rss_mb'] - r['baseline_rss_mb']) / r['npz_mb']:.2f}x the file)")
    print(f"  round trip npz -> paddle -> npz bitwise identical: {r['roundtrip_bitwise']}")


SECTIONS = {"train": bench_train, "inference": bench_inference, "convert": bench_convert,
            "memory": bench_memory, "data": bench_data, "eval": bench_eval}


def main(argv=None):
    def _main():
        parser = argparse.ArgumentParser(description=__doc__,
                                         formatter_class=argparse.RawDescriptionHelpFormatter)
        sub = parser.add_subparsers(dest="section", required=True)
        t = sub.add_parser("train", help="training images/s and engine overhead")
        t.add_argument("--model", nargs="+", default=["ViT_tiny_patch16_224"])
        t.add_argument("--against", choices=["timm"], default=None,
                       help="also time timm + PyTorch on the same model and step")
        t.add_argument("--timm-python", default=None, metavar="PATH",
                       help="python of an environment with torch and timm (default: this one)")
        t.add_argument("--to-static", action="store_true",
                       help="train with Global.to_static (paddle.jit.to_static forward)")
        t.add_argument("--batch-size", type=int, default=32)
        t.add_argument("--img-size", type=int, default=224)
        t.add_argument("--steps", type=int, default=5)
        t.add_argument("--repeats", type=int, default=3)
        t.add_argument("--debug", action="store_true")
        i = sub.add_parser("inference", help="inference images/s: dygraph, exported fp32 "
                                             "and bf16 predictors")
        i.add_argument("--model", default="ViT_tiny_patch16_224")
        i.add_argument("--batch-size", type=int, default=8)
        i.add_argument("--img-size", type=int, default=None,
                       help="default: the model's own resolution")
        i.add_argument("--steps", type=int, default=5)
        i.add_argument("--repeats", type=int, default=3)
        i.add_argument("--device", default=None, help="cpu (default) or gpu:N")
        i.add_argument("--debug", action="store_true")
        c = sub.add_parser("convert", help="npz <-> paddle conversion time and peak memory "
                                           "for a full-size ViT-B/16")
        c.add_argument("--debug", action="store_true")
        add_memory_parser(sub)
        add_data_parser(sub)
        add_eval_parser(sub)
        args = parser.parse_args(argv)
        if args.section != "data":  # a loader worker is one thread: data measures just that
            use_all_cores()
        SECTIONS[args.section](args)

    run(_main, argv if argv is not None else sys.argv)


if __name__ == "__main__":
    main()
