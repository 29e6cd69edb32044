"""`tools/benchmark.py memory`: the memory planner (plsc/memory_plan.py) against measured peaks.

Each measurement runs in a fresh process: build the model (fp32, CPU) and AdamW, one warm-up
step at batch 1 (Paddle creates the gradients and the AdamW moments lazily, at the first step),
then ONE measured training step (forward, backward, AdamW step) at the batch under test.

What is measured: Paddle's CPU allocator statistics (`core.host_memory_stat_*_value
('Allocated', 0)`): the bytes of live tensors, with a resettable peak. They count exactly what
the planner models (parameters, gradients, moments, activations), to the byte. The process's
peak RSS (resource.getrusage ru_maxrss) is printed for information only: it also holds the
Python heap, Paddle's libraries, MKL/oneDNN scratch and glibc's retained free blocks, which on a
GPU correspond to nothing the planner counts (there, the overhead allowance covers them).
  measured state       = allocated after the warm-up (params + grads + moments + the batch)
  measured activations = peak during the measured step - measured state
"""
import json
import os
import sys

from ..child import run_json_child



def measure(model, batch, recompute, seed=0):
    """{'state', 'peak', 'rss_growth'} bytes of one AdamW step (see the module docstring)."""
    import resource

    import paddle
    from paddle.base import core

    from ..models import build_model

    paddle.set_device("cpu")
    paddle.seed(seed)
    net = build_model({"name": model})
    net.set_grad_checkpointing(recompute)
    net.train()
    opt = paddle.optimizer.AdamW(1e-3, parameters=net.parameters(), weight_decay=0.05)
    size, classes = net.img_size, max(net.class_num, 1)

    def step(b):
        x = paddle.randn([b, 3, size, size])
        y = paddle.randint(0, classes, [b])
        paddle.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
        opt.clear_grad()  # set_to_zero: the gradient buffers stay, as in training

    step(1)
    state = core.host_memory_stat_current_value("Allocated", 0)
    rss_before = _current_rss()
    core.host_memory_stat_reset_peak_value("Allocated", 0)
    step(batch)
    peak = core.host_memory_stat_peak_value("Allocated", 0)
    rss_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    return {"state": int(state), "peak": int(peak), "rss_growth": int(rss_peak - rss_before)}


def _current_rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure_in_child(model, batch, recompute):
    """measure() in a fresh process: a process's allocator peak is only its own."""
    return run_json_child("plsc.cli.bench_memory",
                          {"model": model, "batch": batch, "recompute": recompute})


def _row(model, batch, recompute):
    from ..flops import model_spec
    from ..memory_plan import memory_plan
    from ..vit_spec import spec_from_kwargs

    spec = spec_from_kwargs(model_spec(model))
    plan = memory_plan(spec, batch, recompute=recompute, attn_impl="math")  # CPU: math path
    got = measure_in_child(model, batch, recompute)
    act = got["peak"] - got["state"]  # the step's own tensors, its input batch included
    return {"model": model, "batch": batch, "recompute": recompute,
            "plan_act": plan["activations"], "act": act,
            "plan_total": plan["total"], "total": got["peak"], "rss_growth": got["rss_growth"]}


def _mib(n):
    return f"{n / 2**20:9.1f}"


def format_rows(rows):
    """The report's lines (rows from _row)."""
    lines = ["memory: one AdamW training step, fp32, CPU; measured = peak of Paddle's CPU "
             "allocator (MiB); ratio = planned / measured",
             f"{'model':<24}{'batch':>6} {'recompute':>9} {'plan act':>9} {'meas act':>9} "
             f"{'ratio':>6} {'plan tot':>9} {'meas tot':>9} {'ratio':>6} {'RSS grow':>9}"]
    for r in rows:
        lines.append(f"{r['model']:<24}{r['batch']:>6} {'on' if r['recompute'] else 'off':>9} "
                     f"{_mib(r['plan_act'])} {_mib(r['act'])} {r['plan_act'] / r['act']:6.2f} "
                     f"{_mib(r['plan_total'])} {_mib(r['total'])} "
                     f"{r['plan_total'] / r['total']:6.2f} {_mib(r['rss_growth'])}")
    pairs = {}
    for r in rows:
        pairs.setdefault((r["model"], r["batch"]), {})[r["recompute"]] = r
    for (model, batch), pair in pairs.items():
        if len(pair) == 2:
            saved, planned = (pair[False]["act"] - pair[True]["act"],
                              pair[False]["plan_act"] - pair[True]["plan_act"])
            lines.append(f"recompute saves {saved / 2**20:.1f} MiB of activations for {model} "
                         f"at batch {batch} (planned {planned / 2**20:.1f} MiB, "
                         f"{saved / max(pair[False]['act'], 1):.0%} of them)")
    return lines


def add_parser(sub):
    m = sub.add_parser("memory", help="memory planner estimate vs measured peak (CPU, fp32)")
    m.add_argument("--models", nargs="+",
                   default=["ViT_tiny_patch16_224", "ViT_small_patch16_224"])
    m.add_argument("--batch-sizes", nargs="+", type=int, default=[4, 16])
    m.add_argument("--recompute", choices=("both", "off", "on"), default="both")
    m.add_argument("--debug", action="store_true")
    return m


def bench_memory(args):
    modes = {"both": (False, True), "off": (False,), "on": (True,)}[args.recompute]
    rows = []
    for model in args.models:
        for batch in args.batch_sizes:
            for recompute in modes:
                rows.append(_row(model, batch, recompute))
    print("\n".join(format_rows(rows)))


if __name__ == "__main__":  # the child: one measurement, printed as JSON
    job = json.loads(sys.argv[1])
    print(json.dumps(measure(job["model"], job["batch"], job["recompute"])))
