"""plsc-model-info / tools/model_info.py: parameters and FLOPs of a model, computed analytically.

    python tools/model_info.py ViT_base_patch16_224          one model by name
    python tools/model_info.py -c configs/x.yaml [-o ...]    the config's Model section
    python tools/model_info.py configs/x.yaml --img-size 384
    python tools/model_info.py [--all]                       table of every named model
    python tools/model_info.py ViT_large_patch16_224 --memory --batch-size 64 --precision O2 \
        --sharding-stage 2 --sharding-degree 8 [--recompute] [--device-memory 80GB]
                                         per-device training memory, and the largest
                                         micro-batch that fits (plsc/memory_plan.py)

FLOPs are multiply-accumulates (GMACs) of one image at the model's (or --img-size) resolution:
patch-embedding conv (+ the ResNet stem of hybrids), qkv, attention Q K^T and A V, attention
output projection, MLP, pre-logits and head. Bias adds, norms, softmax and GELU are not counted.
"""
import argparse
import os
import sys

from ..errors import ConfigError
from ..memory_plan import (ATTN_IMPLS, MOMENTS, OVERHEAD_FIXED, OVERHEAD_FRACTION, PRECISIONS,
                           max_batch, memory_plan, parse_size, settings_from_config,
                           usable_bytes)
from ..vit_spec import spec_from_kwargs
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


def _size(n):
    return f"{n / 2**30:8.2f} GiB" if n >= 2**30 else f"{n / 2**20:8.1f} MiB"


def _recompute(interval):
    k = int(interval)
    return {0: "off", 1: "on"}.get(k, f"on for blocks 0, {k}, {2 * k}, ...")


def memory_report(info, settings, attn_impl="auto", device_memory="80GB"):
    """The memory plan of `info`'s model under `settings` (plan_settings), as lines."""
    spec = info["spec"]
    rates = tuple(float(spec.get(k) or 0.0)
                  for k in ("drop_rate", "attn_drop_rate", "drop_path_rate"))
    device = parse_size(device_memory)
    kw = {k: v for k, v in settings.items() if k != "batch_size"}
    kw.update(attn_impl=attn_impl, rates=rates)
    arch = spec_from_kwargs(spec)
    plan = memory_plan(arch, settings["batch_size"], **kw)
    shard = (f"sharding stage {plan['sharding_stage']} x {plan['sharding_degree']}"
             if plan["sharding_stage"] else "no sharding")
    parts = plan["activation_parts"]
    best = max_batch(arch, device, **kw)
    usable = usable_bytes(device)
    verdict = "fits" if plan["total"] <= usable else "does NOT fit"
    return [
        f"{info['name']} @ {info['img_size']}px: {plan['num_params']:,} params; micro-batch "
        f"{plan['batch_size']} per device, {plan['precision']}, {plan['optimizer']}, {shard}, "
        f"recompute {_recompute(plan['recompute'])}, attention {plan['attn_impl']}",
        f"  parameters        {_size(plan['params'])}",
        f"  gradients         {_size(plan['grads'])}",
        f"  master weights    {_size(plan['master'])}  (fp32 copies, O2/bf16)",
        f"  optimizer moments {_size(plan['moments'])}",
        f"  activations       {_size(plan['activations'])}  (blocks {_size(parts['blocks']).strip()}"
        f", outside blocks {_size(parts['outside']).strip()}, backward working set "
        f"{_size(parts['working']).strip()})",
        f"  total             {_size(plan['total'])}",
        f"  device {device_memory.strip()}: {_size(usable).strip()} usable after the "
        f"overhead allowance ({OVERHEAD_FIXED / 2**30:.1f} GiB CUDA context/workspaces + "
        f"{OVERHEAD_FRACTION:.0%} fragmentation): {verdict}; largest micro-batch {best}",
    ]


def _load(target, overrides):
    """(Model section, the whole validated config or None) of a config path or a model name."""
    if target.endswith((".yaml", ".yml")) or os.path.isfile(target):
        from ..config import get_config

        cfg = get_config(target, overrides)
        return dict(cfg.Model), cfg
    if overrides:
        raise ConfigError("-o overrides need a config file (model_info -c CONFIG -o ...)")
    return {"name": target}, None


# Planner settings: built-in defaults, then the config's (when one is given), then the flags.
PLAN_DEFAULTS = {"batch_size": 1, "precision": "fp32", "optimizer": "AdamW",
                 "sharding_stage": 0, "sharding_degree": 1, "recompute": 0}


def plan_settings(args, cfg):
    settings = dict(PLAN_DEFAULTS)
    if cfg is not None:
        settings.update(settings_from_config(cfg))
    settings.update({k: getattr(args, k) for k in PLAN_DEFAULTS if getattr(args, k) is not None})
    return settings


def _parser():
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
    mem = parser.add_argument_group("memory planner (--memory)")
    mem.add_argument("--memory", action="store_true",
                     help="per-device training memory instead of the parameter/FLOP report")
    mem.add_argument("--batch-size", type=int, help="micro-batch per device (default: the "
                     "config's batch_size / accum_steps, else 1)")
    mem.add_argument("--precision", choices=PRECISIONS,
                     help="fp32, O1 (fp16 compute, fp32 weights), O2 (fp16 weights + fp32 "
                          "master), bf16 (as O2 in bfloat16); default: the config's FP16")
    mem.add_argument("--optimizer", choices=tuple(MOMENTS))
    mem.add_argument("--sharding-stage", type=int, help="0 (none), 1, 2 or 3")
    mem.add_argument("--sharding-degree", type=int)
    mem.add_argument("--recompute", type=int, nargs="?", const=1, metavar="K",
                     help="recompute every block (or every K-th; 0: off)")
    mem.add_argument("--attn-impl", default="auto", choices=ATTN_IMPLS,
                     help="auto: flash attention in half precision, math in fp32")
    mem.add_argument("--device-memory", default="80GB", help="e.g. 80GB, 40GiB (default 80GB)")
    return parser


def main(argv=None):
    def _main():
        args = _parser().parse_args(argv)
        from ..flops import model_info, named_models

        target = args.config or args.target
        if args.img_size is not None and args.img_size < 1:
            raise ConfigError(f"--img-size must be a positive integer, got {args.img_size}")
        if target and args.config and args.target:
            raise ConfigError("give either NAME|CONFIG or -c CONFIG, not both")
        if args.memory and (args.all or not target):
            raise ConfigError("--memory needs one model: a name or a config file")
        if args.all or not target:
            infos = []
            for name in named_models():
                try:
                    infos.append(model_info(name, args.img_size))
                except ConfigError as e:
                    infos.append((name, str(e)))
            print("\n".join(table(infos)))
            return 0
        model, cfg = _load(target, args.override)
        info = model_info(model, args.img_size)
        print("\n".join(memory_report(info, plan_settings(args, cfg), args.attn_impl,
                                       args.device_memory) if args.memory else describe(info)))
        return 0

    return run(_main, argv if argv is not None else sys.argv)


if __name__ == "__main__":
    main()
