"""The throughput probe and the memory planner against measurement.

GPU: ViT-B/16 at 224 px, fp16 O2 (fp32 master weights, AdamW, dynamic loss scaling), at the
largest micro-batch memory_plan.max_batch allows on this device (or --batch). Measured in a fresh
process (`python -m plsc.selftest.probe JOB`) so that the peak is this step's alone: one
training step on synthetic tensors already on the device (no data loading), 3 warm-up steps,
then 10 timed. Reported: images/s per device and the model FLOPs utilisation, 6 x MACs per image
(forward 2 x MACs, backward twice that; plsc/flops.py) x images/s / the device's peak fp16
dense FLOP/s. Peak memory: paddle.device.cuda.max_memory_allocated against memory_plan's total.
CPU: no throughput figure (a CPU images/s says nothing about a GPU node; tools/benchmark.py
measures CPU training); the planner is checked against Paddle's host allocator peak for one
fp32 AdamW step of ViT-Ti/16 (as tools/benchmark.py memory measures it).
"""
import json
import sys
import time

from ..child import run_json_child
from ..cli.bench_memory import measure_in_child
from ..flops import count_macs, model_spec
from ..memory_plan import max_batch, memory_plan
from ..vit_spec import spec_from_kwargs
from . import hardware
from .result import FAIL, PASS, Result, skip

GPU_MODEL, CPU_MODEL, CPU_BATCH = "ViT_base_patch16_224", "ViT_tiny_patch16_224", 4
# planned / measured. CPU: the band tests/test_memory_plan.py holds the planner to (it bounds
# the backward's working set from above). GPU: the planner may not undershoot by more than the
# 10% its overhead allowance absorbs (not measured here: no GPU).
BANDS = {"cpu": (1.0, 1.3), "gpu": (0.9, 1.5)}
THROUGHPUT, MEMORY = "throughput ViT-B/16 fp16 O2", "memory planner vs measured peak"


def gpu_probe(ctx):
    """Runs (once per selftest) and caches the GPU measurement, or its failure."""
    if "probe" not in ctx:
        try:
            ctx["probe"] = _gpu_probe(ctx)
        except Exception as e:  # noqa: BLE001 - both checks using it report it
            ctx["probe"] = e
    if isinstance(ctx["probe"], Exception):
        raise ctx["probe"]
    return ctx["probe"]


def _gpu_probe(ctx):
    import paddle

    spec = spec_from_kwargs(model_spec(GPU_MODEL))
    total = paddle.device.cuda.get_device_properties(0).total_memory
    batch = ctx["args"].batch or max_batch(spec, total, precision="O2", optimizer="AdamW")
    if batch < 1:
        raise RuntimeError(f"the planner fits no batch of {GPU_MODEL} in {total / 2**30:.1f} GiB")
    got = run_json_child("plsc.selftest.probe", {"model": GPU_MODEL, "batch": int(batch)},
                         timeout=900)
    plan = memory_plan(spec, batch, precision="O2", optimizer="AdamW")
    return dict(got, batch=batch, plan=plan["total"], macs=count_macs(spec)[0])


def check_throughput(ctx):
    reason = hardware.half_reason("float16")
    if reason:
        return [skip(THROUGHPUT, reason if "CPU" not in reason else
                     "no GPU (a CPU images/s says nothing about a GPU run; tools/benchmark.py "
                     "measures CPU training)")]
    p = gpu_probe(ctx)
    name = hardware.device_name()
    peak, source = hardware.peak_tflops(name, ctx["args"].peak_tflops)
    mfu = (f"MFU {6 * p['macs'] * p['ips'] / (peak * 1e12):.1%} of {peak:g} TFLOP/s ({source})"
           if peak else f"MFU: {source}")
    chosen = "--batch" if ctx["args"].batch else "the planner's largest"
    return [Result(THROUGHPUT, PASS, f"{p['ips']:.1f} img/s",
                   f"per device, micro-batch {p['batch']} ({chosen}), {name}; {mfu}")]


def check_memory(ctx):
    if hardware.no_gpu_reason():
        return [_cpu_memory()]
    if hardware.half_reason("float16"):
        return [skip(MEMORY, hardware.half_reason("float16"))]
    p = gpu_probe(ctx)
    return [_judge(f"{GPU_MODEL} fp16 O2 batch {p['batch']}", p["plan"], p["peak"], "gpu")]


def _cpu_memory():
    spec = spec_from_kwargs(model_spec(CPU_MODEL))
    got = measure_in_child(CPU_MODEL, CPU_BATCH, recompute=False)
    plan = memory_plan(spec, CPU_BATCH, recompute=False, attn_impl="math")
    return _judge(f"{CPU_MODEL} fp32 batch {CPU_BATCH}, CPU allocator", plan["total"],
                  got["peak"], "cpu")


def _judge(what, planned, measured, device):
    lo, hi = BANDS[device]
    ratio = planned / measured
    ok = lo <= ratio <= hi
    note = (f"{what}: planned {planned / 2**20:.0f} MiB, measured {measured / 2**20:.0f} MiB "
            f"(planned/measured must be in [{lo}, {hi}])")
    return Result(MEMORY, PASS if ok else FAIL, f"ratio {ratio:.2f}", note)


def measure_gpu(model, batch, steps=10, warmup=3):
    """The child: {'ips', 'peak'} of fp16 O2 training steps on synthetic device tensors."""
    import paddle

    from ..engine.amp import FP32_OPS
    from ..models import build_model

    paddle.set_device("gpu")
    paddle.seed(0)
    net = build_model({"name": model})
    net.train()
    opt = paddle.optimizer.AdamW(1e-4, parameters=net.parameters(), weight_decay=0.05)
    net, opt = paddle.amp.decorate(models=net, optimizers=opt, level="O2", dtype="float16",
                                   master_weight=True)
    scaler = paddle.amp.GradScaler(init_loss_scaling=1024.0)
    x = paddle.randn([batch, 3, net.img_size, net.img_size])
    y = paddle.randint(0, net.class_num, [batch])

    def step():
        with paddle.amp.auto_cast(level="O2", dtype="float16", custom_black_list=FP32_OPS):
            logits = net(x)
        loss = paddle.nn.functional.cross_entropy(logits.astype("float32"), y)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        opt.clear_grad()

    for _ in range(warmup):
        step()
    paddle.device.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    paddle.device.cuda.synchronize()
    ips = steps * batch / (time.perf_counter() - start)
    return {"ips": ips, "peak": int(paddle.device.cuda.max_memory_allocated())}


if __name__ == "__main__":  # the child process
    job = json.loads(sys.argv[1])
    print(json.dumps(measure_gpu(job["model"], job["batch"])))
