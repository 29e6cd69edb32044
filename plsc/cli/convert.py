"""plsc-convert / tools/convert.py: checkpoint conversion between the official JAX release,
timm and plsc/PLSC.

    convert.py npz2paddle  SRC.npz DST_PREFIX [--check]
    convert.py paddle2npz  SRC_PREFIX DST.npz [--model-config YAML]
    convert.py timm2paddle SRC.safetensors DST_PREFIX [--num-heads N] [--act gelu|gelu_tanh]
    convert.py paddle2timm SRC_PREFIX DST.safetensors

*2paddle writes DST_PREFIX.pdparams and DST_PREFIX.yaml (the `Model:` section that rebuilds
the network). Outputs appear all together or not at all. Bad input: `error: ...`, exit 2.
"""
import argparse
import logging
import os

from .common import run

logger = logging.getLogger("plsc")


def build_parser():
    p = argparse.ArgumentParser(
        prog="convert.py",
        description="Convert ViT checkpoints between the official npz release, timm and plsc.")
    debug = argparse.ArgumentParser(add_help=False)  # accepted before or after the command
    debug.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="full tracebacks instead of one-line errors")
    p.add_argument("--debug", action="store_true",
                   help="full tracebacks instead of one-line errors")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    c = sub.add_parser("npz2paddle", parents=[debug],
                       help="official ViT / R50+ViT npz -> .pdparams + .yaml")
    c.add_argument("src", metavar="SRC.npz")
    c.add_argument("dst", metavar="DST_PREFIX")
    c.add_argument("--check", action="store_true",
                   help="compare the converted model with a float64 numpy forward of the "
                        "source arrays (batch 2, seeded) and print the max difference")

    c = sub.add_parser("paddle2npz", parents=[debug],
                       help=".pdparams -> official (released-layout) npz")
    c.add_argument("src", metavar="SRC_PREFIX")
    c.add_argument("dst", metavar="DST.npz")
    c.add_argument("--model-config", default=None, metavar="YAML",
                   help="YAML with the Model section (default: SRC_PREFIX.yaml, else the "
                        "run's config.yaml in the checkpoint's directory); needed for "
                        "num_heads of non-standard widths")

    c = sub.add_parser("timm2paddle", parents=[debug],
                       help="timm vit_* safetensors -> .pdparams + .yaml")
    c.add_argument("src", metavar="SRC.safetensors")
    c.add_argument("dst", metavar="DST_PREFIX")
    c.add_argument("--num-heads", type=int, default=None,
                   help="attention heads (default: the official value for the width)")
    c.add_argument("--act", choices=("gelu", "gelu_tanh"), default="gelu",
                   help="activation written to the YAML (timm runs exact 'gelu')")

    c = sub.add_parser("paddle2timm", parents=[debug],
                       help=".pdparams -> timm-named safetensors")
    c.add_argument("src", metavar="SRC_PREFIX")
    c.add_argument("dst", metavar="DST.safetensors")
    return p


def run_config(src_prefix):
    """The training run's config.yaml next to a checkpoint ({output_dir}/{Model.name}/ holds
    both), when there is no SRC_PREFIX.yaml (which paddle2npz reads first); else None."""
    from ..convert.common import strip_pdparams

    prefix = strip_pdparams(src_prefix)
    path = os.path.join(os.path.dirname(prefix), "config.yaml")
    if os.path.isfile(prefix + ".yaml") or not os.path.isfile(path):
        return None
    logger.info("model config: %s (the run's config.yaml)", path)
    return path


def main(argv=None):
    def _main():
        args = build_parser().parse_args(argv)
        if args.command == "npz2paddle":
            from ..convert.npz import npz_to_paddle
            npz_to_paddle(args.src, args.dst, check=args.check)
        elif args.command == "paddle2npz":
            from ..convert.npz import paddle_to_npz
            paddle_to_npz(args.src, args.dst,
                          model_config_path=args.model_config or run_config(args.src))
        elif args.command == "timm2paddle":
            from ..convert.timm import timm_to_paddle
            timm_to_paddle(args.src, args.dst, num_heads=args.num_heads, act=args.act)
        else:
            from ..convert.timm import paddle_to_timm
            paddle_to_timm(args.src, args.dst)

    return run(_main, argv)


if __name__ == "__main__":
    main()
