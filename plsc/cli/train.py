"""plsc-train / tools/train.py: train from a config (single process or under
`python -m paddle.distributed.launch`)."""
from .common import build_parser, config_from_args, run, use_all_cores


def main():
    def _main():
        args = build_parser("Train a model from a plsc config.").parse_args()
        cfg = config_from_args(args)
        use_all_cores()
        from ..engine import train

        train(cfg)

    run(_main)


if __name__ == "__main__":
    main()
