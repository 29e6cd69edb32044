"""plsc-export / tools/export.py: a trained model -> a paddle.inference model directory.

    python tools/export.py -c CONFIG -o Global.pretrained_model=PREFIX [-o Global.output_dir=DIR]

writes {output_dir}/{Model.name}/export/{inference.json, inference.pdiparams, infer_cfg.yaml}:
the static graph with a dynamic batch dimension and fp32 weights (also for FP16 O2 configs),
and the eval preprocessing + class names that tools/predict.py --model-dir and
plsc.apis.init_model(DIR) use. --check compares the exported predictor with the dygraph model.
"""
import sys

from .common import build_parser, config_from_args, run


def main(argv=None):
    def _main():
        parser = build_parser("Export a trained model for paddle.inference.")
        parser.add_argument("--check", action="store_true",
                            help="run the exported model and the dygraph model on the same "
                                 "random batch and print the largest logit difference")
        args = parser.parse_args(argv)
        cfg = config_from_args(args)
        from ..apis import export_model

        out = export_model(cfg, check=args.check)
        shape = ", ".join("None" if v is None else str(v) for v in out["input_shape"])
        print(f"exported {cfg.Model.name}: {out['model']}, {out['params']}, {out['infer_cfg']} "
              f"(input [{shape}], fp32, class names: {out['class_names_source']})")
        if args.check:
            print(f"check: max |logits diff| exported vs dygraph = {out['check_max_diff']:.2e}")

    return run(_main, argv if argv is not None else sys.argv)


if __name__ == "__main__":
    main()
