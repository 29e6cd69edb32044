"""`tools/benchmark.py eval`: evaluation inside training vs the eval tool on the same data.

Both call the engine's run_evaluation over DataLoader.Eval; training's call happens on a model
that has gradients and optimizer state beside it (after a real training step), the tool's on a
freshly built model. A third runner is the tool's fast path, `tools/eval.py --exported DIR`
(the same weights exported and run by the paddle.inference predictor). Interleaved rounds;
medians and ranges of images/s.
"""
import os
import shutil
import tempfile


def add_parser(sub):
    e = sub.add_parser("eval", help="evaluation inside training vs tools/eval.py (and its "
                                    "--exported fast path) on the same data")
    e.add_argument("--model", default="ViT_tiny_patch16_224")
    e.add_argument("--batch-size", type=int, default=32)
    e.add_argument("--images", type=int, default=64, help="eval set size")
    e.add_argument("--repeats", type=int, default=3)
    e.add_argument("--debug", action="store_true")


def _config(model, batch_size, images, out_dir):
    dataset = {"name": "SyntheticShapes", "root": os.path.join(out_dir, "shapes"),
               "class_num": 4, "num_train": batch_size, "num_val": images, "image_size": 224,
               "transform_ops": [{"DecodeImage": None},
                                 {"NormalizeImage": {"scale": "1.0/255.0", "mean": [0.5] * 3,
                                                     "std": [0.5] * 3, "order": ""}},
                                 {"ToCHWImage": None}]}

    def loader(split, shuffle):
        return {"dataset": dict(dataset, split=split),
                "sampler": {"name": "DistributedBatchSampler", "batch_size": batch_size,
                            "drop_last": False, "shuffle": shuffle},
                "loader": {"num_workers": 0}}

    return {
        "Global": {"output_dir": out_dir, "device": "cpu", "epochs": 1, "seed": 0,
                   "print_batch_step": 10**9, "eval_during_train": True},
        "Model": {"name": model, "class_num": 4},
        "Loss": {"Train": [{"CELoss": {"weight": 1.0}}], "Eval": [{"CELoss": {"weight": 1.0}}]},
        "Metric": {"Eval": [{"TopkAcc": {"topk": [1, 2]}}]},
        "LRScheduler": {"name": "ViTLRScheduler", "learning_rate": 1e-3, "warmup_steps": 0},
        "Optimizer": {"name": "AdamW", "weight_decay": 0.05},
        "DataLoader": {"Train": loader("train", True), "Eval": loader("val", False)},
    }


def bench_eval(args):
    import paddle
    import yaml

    from ..apis import export_model
    from ..apis.fast_eval import exported_eval_model
    from ..config import get_config
    from ..engine import build_trainer
    from ..engine.build import build_evaluation
    from ..engine.evaluator import run_evaluation
    from ..engine.loop import run_iter
    from .benchmark import _timed_stats

    tmp = tempfile.mkdtemp(prefix="plsc-bench-eval-")
    try:
        path = os.path.join(tmp, "bench.yaml")
        with open(path, "w") as f:
            yaml.safe_dump(_config(args.model, args.batch_size, args.images, tmp), f)
        cfg = get_config(path)
        t = build_trainer(cfg)
        t.logger.setLevel("WARNING")
        images, labels = next(iter(t.train_data))
        run_iter(t, images, labels)  # gradients and AdamW moments now exist, as mid-training
        with paddle.no_grad():  # a random head: logits that differ per image and per path
            head = t.model.head.weight
            head.set_value(paddle.randn(head.shape, dtype=head.dtype) * 0.02)
        paddle.save(t.model.state_dict(), os.path.join(tmp, "w.pdparams"))
        tool_cfg = get_config(path, [f"Global.pretrained_model={os.path.join(tmp, 'w')}"])
        ctx, model, parts, precision = build_evaluation(tool_cfg)
        ctx.logger.setLevel("WARNING")
        export = export_model(tool_cfg, os.path.join(tmp, "w"), output_dir=tmp)
        fast = exported_eval_model(export["dir"], tool_cfg)
        results = {}

        def runner(name, m, eval_parts, prec, world):
            return lambda: results.__setitem__(
                name, run_evaluation(m, eval_parts, prec, world, ctx.logger))

        runners = {"in training": runner("in training", t.model, t.eval, t.optim.precision,
                                         t.ctx.world),
                   "eval tool": runner("eval tool", model, parts, precision, ctx.world),
                   "eval tool --exported": runner("eval tool --exported", fast, parts,
                                                  precision, ctx.world)}
        stats = _timed_stats(runners, args.images, 1, args.repeats)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"eval {args.model} 224px, {args.images} images in batches of {args.batch_size}, "
          f"{args.repeats} rounds, {os.environ.get('OMP_NUM_THREADS', '?')} thread(s):")
    ref = results["eval tool"]
    for name, (median, low, high) in stats.items():
        diff = max(abs(results[name][k] - ref[k]) for k in ref)
        print(f"  {name:<21}: {median:8.2f} images/s  (range {low:.2f}-{high:.2f})  "
              f"max |metric - eval tool| {diff:.1e}")
    ratio = stats["in training"][0] / stats["eval tool"][0]
    print(f"  in training / eval tool: x{ratio:.2f}  (target >= 1, within noise)")
