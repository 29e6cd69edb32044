"""plsc-model-info / tools/model_info.py: parameters and FLOPs of a model, computed analytically.

    python tools/model_info.py ViT_base_patch16_224          one model by name
    python tools/model_info.py -c configs/x.yaml [-o ...]    the config's Model section
    python tools/model_info.py configs/x.yaml --img-size 384
    python tools/model_info.py [--all]                       table of every named model

FLOPs are multiply-accumulates (GMACs) of one image at the model's (or --img-size) resolution:
patch-embedding conv (+ the ResNet stem of hybrids), qkv, attention Q K^T and A V, attention
output projection, MLP, pre-logits and head. Bias adds, norms, softmax and GELU are not counted.
"""
import argparse
import os
import sys

from ..errors import ConfigError
from .common import run

COUNTED = ("GMACs = multiply-accumulates per image: patch embed conv (+ ResNet stem), qkv, "
           "attention QK^T and AV, attn proj, MLP, pre-logits, head; bias/norm/softmax/GELU "
           "not counted")


def _fmt_gmacs(gmacs):
    return f"{gmacs:.1f}" if gmacs >= 10 else f"{gmacs:.2f}"


def describe(info):
    """The report of one model, as lines."""
    parts = info["parts"]
    total = info["macs"] or 1
    lines = [f"{info['name']} @ {info['img_size']}px: {info['params']:,} params "
             f"({info['params'] / 1e6:.2f}M), {_fmt_gmacs(info['gmacs'])} GMACs",
             "  " + ", ".join(f"{k} {v / 1e9:.3f}G ({100 * v / total:.1f}%)"
                              for k, v in parts.items()),
             "  " + COUNTED]
    return lines


def table(infos):
    """Rows of name / resolution / params / GMACs; infos may hold (name, error) pairs."""
    width = max([len("model")] + [len(i["name"] if isinstance(i, dict) else i[0])
                                  for i in infos])
    lines = [f"{'model':<{width}}  {'img':>4}  {'params':>9}  {'GMACs':>7}"]
    for info in infos:
        if isinstance(info, dict):
            lines.append(f"{info['name']:<{width}}  {info['img_size']:>4}  "
                         f"{info['params'] / 1e6:>8.2f}M  {_fmt_gmacs(info['gmacs']):>7}")
        else:
            lines.append(f"{info[0]:<{width}}  n/a: {info[1]}")
    lines.append(COUNTED)
    return lines


def _model_section(target, overrides):
    """The Model section named by a config path, or {'name': target}."""
    if target.endswith((".yaml", ".yml")) or os.path.isfile(target):
        from ..config import get_config

        return dict(get_config(target, overrides).Model)
    if overrides:
        raise ConfigError("-o overrides need a config file (model_info -c CONFIG -o ...)")
    return {"name": target}


def main(argv=None):
    def _main():
        parser = argparse.ArgumentParser(
            description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
        parser.add_argument("target", nargs="?", metavar="NAME|CONFIG",
                            help="a registered model name or a config file")
        parser.add_argument("-c", "--config", help="config file (same as giving it as NAME)")
        parser.add_argument("-o", "--override", action="extend", nargs="+", default=[],
                            metavar="KEY=VALUE", help="config overrides (with a config)")
        parser.add_argument("--img-size", type=int, help="count at this resolution")
        parser.add_argument("--all", action="store_true", help="table of every named model")
        parser.add_argument("--debug", action="store_true")
        args = parser.parse_args(argv)
        from ..flops import model_info, named_models

        target = args.config or args.target
        if args.img_size is not None and args.img_size < 1:
            raise ConfigError(f"--img-size must be a positive integer, got {args.img_size}")
        if target and args.config and args.target:
            raise ConfigError("give either NAME|CONFIG or -c CONFIG, not both")
        if args.all or not target:
            infos = []
            for name in named_models():
                try:
                    infos.append(model_info(name, args.img_size))
                except ConfigError as e:
                    infos.append((name, str(e)))
            print("\n".join(table(infos)))
            return 0
        print("\n".join(describe(model_info(_model_section(target, args.override),
                                            args.img_size))))
        return 0

    return run(_main, argv if argv is not None else sys.argv)


if __name__ == "__main__":
    main()
