"""plsc-eval / tools/eval.py: evaluate Global.pretrained_model (or Global.checkpoint) on
DataLoader.Eval, exactly (no padded samples counted), with any number of processes."""
from .common import build_parser, config_from_args, run, use_all_cores


def main():
    def _main():
        args = build_parser("Evaluate a trained model on DataLoader.Eval.").parse_args()
        cfg = config_from_args(args)
        g = cfg.Global
        if not g.pretrained_model and not g.checkpoint:
            from ..errors import ConfigError

            raise ConfigError("evaluation needs weights: set -o Global.pretrained_model=PREFIX "
                              "(or Global.checkpoint=PREFIX)")
        if not g.pretrained_model:
            g.pretrained_model = g.checkpoint
        use_all_cores()
        from ..engine import evaluate

        result = evaluate(cfg)
        print("eval: " + ", ".join(f"{k}={v:.5f}" for k, v in result.items()))

    run(_main)


if __name__ == "__main__":
    main()
