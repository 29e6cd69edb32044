"""plsc-eval / tools/eval.py: evaluate Global.pretrained_model (or Global.checkpoint) on
DataLoader.Eval, exactly (no padded samples counted), with any number of processes.

Fast paths (same data, loss and metrics, results equal within float noise):
    --exported DIR           run an exported model directory (tools/export.py) through the
                             paddle.inference predictor (oneDNN) instead of the dygraph model
    -o Global.to_static=True run the model's forward as a static graph (paddle.jit.to_static)
"""
from .common import build_parser, config_from_args, run, use_all_cores


def main():
    def _main():
        parser = build_parser("Evaluate a trained model on DataLoader.Eval.")
        parser.add_argument("--exported", metavar="DIR", default=None,
                            help="evaluate this exported model directory (its weights) through "
                                 "the paddle.inference predictor")
        parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                            help="with --exported on CPU: bf16 runs oneDNN bf16 kernels (needs "
                                 "AVX512-BF16 or AMX); compare its accuracy with fp32's")
        args = parser.parse_args()
        cfg = config_from_args(args)
        g = cfg.Global
        if not g.pretrained_model and not g.checkpoint and not args.exported:
            from ..errors import ConfigError

            raise ConfigError("evaluation needs weights: set -o Global.pretrained_model=PREFIX "
                              "(or Global.checkpoint=PREFIX, or pass --exported DIR)")
        if not g.pretrained_model and not args.exported:
            g.pretrained_model = g.checkpoint
        threads = use_all_cores()
        if args.precision != "fp32" and not args.exported:
            from ..errors import ConfigError

            raise ConfigError("--precision bf16 is for exported models: add --exported DIR")
        result = _evaluate(cfg, args.exported, threads, args.precision)
        print("eval: " + ", ".join(f"{k}={v:.5f}" for k, v in result.items()))

    run(_main)


def _evaluate(cfg, exported, threads, precision="fp32"):
    from ..engine import evaluate

    if not exported:
        return evaluate(cfg)
    from ..apis.fast_eval import exported_eval_model
    from ..engine.build import build_evaluation
    from ..engine.evaluator import run_evaluation

    cfg.Global.pretrained_model = None  # the export carries the weights
    ctx, _, parts, precision = build_evaluation(cfg)
    import paddle

    device = paddle.device.get_device() if ctx.device == "gpu" else "cpu"  # gpu:N of this rank
    model = exported_eval_model(exported, cfg, device, threads, precision)
    return run_evaluation(model, parts, precision, ctx.world, ctx.logger)


if __name__ == "__main__":
    main()
