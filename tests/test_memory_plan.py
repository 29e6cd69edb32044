"""The memory planner (plsc/memory_plan.py) against independent references: parameter counts
of built models, hand-written byte formulas for the state and the sharding divisions, and
Paddle's CPU allocator statistics for the activations.

Why a tight tolerance is possible for activations: Paddle's allocator counts the bytes of live
tensors exactly and deterministically (no RSS noise), so the kept-for-backward tensors of a
forward pass must match the planner's list to within the few small tensors it leaves out
(scalars, shape buffers): 1%. The step's peak adds the backward's transient working set, which
the planner bounds from above by one block's largest gradients: planned / measured in [1, 1.3].
"""
import re

import numpy as np
import paddle
import pytest
from paddle.base import core

from plsc import memory_plan as mp
from plsc.cli.bench_memory import measure_in_child
from plsc.errors import ConfigError
from plsc.models import build_model
from plsc.models.layers import Block
from plsc.vit_spec import VARIANTS, ViTSpec
from tiny import run_tool

TINY = ViTSpec(img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2, class_num=5)


def _built_counts(spec):
    """(all parameters, LayerNorm parameters) of the built model."""
    model = build_model({"name": "VisionTransformer", **spec.config()})
    params = dict(model.named_parameters())
    total = sum(int(np.prod(p.shape)) for p in params.values())
    norms = sum(int(np.prod(p.shape)) for n, p in params.items() if "norm" in n)
    return total, norms


def test_state_bytes_by_hand():
    n, norms = _built_counts(TINY)
    block = 64 + (32 * 96 + 96) + (32 * 32 + 32) + 64 + (32 * 128 + 128) + (128 * 32 + 32)
    assert n == (48 * 32 + 32) + 32 + 17 * 32 + 2 * block + 64 + (32 * 5 + 5)
    assert norms == 2 * 128 + 64
    fp32 = mp.state_bytes(TINY)
    assert fp32 == {"params": 4 * n, "grads": 4 * n, "master": 0, "moments": 2 * 4 * n,
                    "num_params": n}
    assert mp.state_bytes(TINY, optimizer="Momentum")["moments"] == 4 * n
    o2 = mp.state_bytes(TINY, precision="O2")
    half = n - norms  # LayerNorm parameters stay fp32 under O2
    assert o2 == {"params": 2 * half + 4 * norms, "grads": 2 * half + 4 * norms,
                  "master": 4 * half, "moments": 8 * n, "num_params": n}
    assert mp.state_bytes(TINY, precision="bf16") == o2
    assert mp.state_bytes(TINY, precision="O1") == fp32


@pytest.mark.parametrize("stage, divided", [
    (0, ()), (1, ("moments", "master")), (2, ("moments", "master", "grads")),
    (3, ("moments", "master", "grads", "params"))])
def test_sharding_divides_by_stage(stage, divided):
    whole = mp.state_bytes(VARIANTS["ViT_large_patch16_224"].spec, precision="O2")
    shard = mp.state_bytes(VARIANTS["ViT_large_patch16_224"].spec, precision="O2",
                           sharding_stage=stage, sharding_degree=8)
    for key in ("params", "grads", "master", "moments"):
        want = -(-whole[key] // 8) if key in divided else whole[key]
        assert shard[key] == want, key


def test_published_sizes_flow_through():
    h14 = mp.memory_plan(VARIANTS["ViT_huge_patch14_224"].spec, 1)
    assert h14["num_params"] == 632_045_800 and h14["params"] == 4 * 632_045_800


def _kept_by_forward(layer, shape):
    """Bytes a forward pass keeps for the backward, per Paddle's allocator, as in a chain of
    blocks: the input is a non-leaf that the caller drops (it stays allocated only if the layer
    saved it) and the output (the next block's input) is not counted."""
    x0 = paddle.randn(shape)
    x0.stop_gradient = False
    x = x0 * 1.0  # a non-leaf, like a block's input in the model (scale's backward keeps nothing)
    nbytes = 4 * int(np.prod(shape))
    before = core.host_memory_stat_current_value("Allocated", 0) - nbytes
    out = layer(x)
    del x
    kept = core.host_memory_stat_current_value("Allocated", 0) - before - nbytes
    out.sum().backward()
    return kept


@pytest.mark.parametrize("rates", [(0, 0, 0), (0.1, 0, 0), (0, 0.1, 0), (0, 0, 0.1)])
def test_block_tensors_match_the_allocator(rates):
    """One block's saved tensors against the planner's list (which names the block's input for
    what the first LayerNorm keeps: its input in Paddle's kernel, its normalised input on the
    CPU training path; the same bytes)."""
    spec = VARIANTS["ViT_tiny_patch16_224"].spec
    block = Block(spec.embed_dim, spec.num_heads, 4.0, True, *rates)
    block.train()
    measured = _kept_by_forward(block, [2, spec.num_tokens, spec.embed_dim])
    planned = sum(b for _, b in mp.block_tensors(spec, 2, "fp32", "math", rates))
    assert abs(planned / measured - 1) < 0.01, (planned, measured)


@pytest.mark.parametrize("recompute", [False, True])
def test_step_peak_against_the_allocator(recompute):
    """A whole AdamW step of a small named ViT (measured as tools/benchmark.py memory does)."""
    name, batch = "ViT_tiny_patch4_32", 8
    got = measure_in_child(name, batch, recompute)  # a fresh process, as the benchmark
    plan = mp.memory_plan(VARIANTS[name].spec, batch, recompute=recompute, attn_impl="math")
    state = plan["params"] + plan["grads"] + plan["moments"]
    assert abs(state / got["state"] - 1) < 0.01
    ratio = plan["activations"] / (got["peak"] - got["state"])
    assert 1.0 <= ratio < 1.3, ratio
    assert 1.0 <= plan["total"] / got["peak"] < 1.15


def test_recompute_keeps_block_inputs_plus_one_block():
    spec, b = VARIANTS["ViT_small_patch16_224"].spec, 4
    one = sum(x for _, x in mp.block_tensors(spec, b))
    full = mp.activation_bytes(spec, b, attn_impl="math")
    rc = mp.activation_bytes(spec, b, recompute=True, attn_impl="math")
    assert full["blocks"] == 12 * one
    assert rc["blocks"] == 12 * 4 * b * spec.num_tokens * spec.embed_dim + one


def test_recompute_interval_counts_every_kth_block():
    spec, b = VARIANTS["ViT_small_patch16_224"].spec, 4
    one = sum(x for _, x in mp.block_tensors(spec, b))
    rc = mp.activation_bytes(spec, b, recompute=5, attn_impl="math")  # blocks 0, 5, 10
    assert rc["blocks"] == 3 * 4 * b * spec.num_tokens * spec.embed_dim + 9 * one + one


def test_settings_from_a_config(tmp_path):
    from plsc.config import get_config
    from tiny import tiny_config

    path = tiny_config(tmp_path, tmp_path / "shapes", batch_size=8)
    assert mp.settings_from_config(get_config(path)) == {
        "precision": "fp32", "optimizer": "Momentum", "sharding_stage": 0,
        "sharding_degree": 1, "recompute": 0, "batch_size": 8}
    cfg = get_config(path, ["FP16.level=O2", "FP16.dtype=bfloat16", "Global.accum_steps=4",
                            "DistributedStrategy.sharding={sharding_stage: 2, sharding_degree: 4}",
                            "DistributedStrategy.recompute={layerlist_interval: 3}"])
    assert mp.settings_from_config(cfg) == {
        "precision": "bf16", "optimizer": "Momentum", "sharding_stage": 2, "sharding_degree": 4,
        "recompute": 3, "batch_size": 2}
    r = run_tool("model_info", [path, "--memory", "-o", "FP16.level=O1",
                                "DistributedStrategy.recompute=True", "--batch-size", "3"])
    assert r.returncode == 0, r.stderr
    assert ("micro-batch 3 per device, O1, Momentum, no sharding, recompute on"
            in r.stdout.splitlines()[0])


def test_parse_size():
    assert mp.parse_size("80GB") == 80 * 10**9
    assert mp.parse_size("40 GiB") == 40 * 2**30
    assert mp.parse_size("1.5TB") == 1.5e12
    assert mp.parse_size("512MiB") == 2**29
    for bad in ("abc", "80", "0GB", "-1GB", "80XB", "", "GB"):
        if bad == "80":
            assert mp.parse_size(bad) == 80  # a bare number is bytes
            continue
        with pytest.raises(ConfigError, match="expected a positive number with a unit"):
            mp.parse_size(bad)


def test_max_batch_is_the_largest_that_fits():
    spec = VARIANTS["ViT_base_patch16_224"].spec
    for kw in ({}, {"precision": "O2", "recompute": True}, {"sharding_stage": 3,
                                                           "sharding_degree": 8}):
        best = mp.max_batch(spec, 40 * 10**9, **kw)
        usable = mp.usable_bytes(40 * 10**9)
        assert mp.memory_plan(spec, best, **kw)["total"] <= usable
        assert mp.memory_plan(spec, best + 1, **kw)["total"] > usable
    assert mp.max_batch(VARIANTS["ViT_huge_patch14_224"].spec, 4 * 10**9) == 0


def test_bad_inputs_are_config_errors():
    for kw, msg in (({"precision": "fp16"}, "precision: expected one of"),
                    ({"optimizer": "SGD"}, "optimizer: expected one of"),
                    ({"sharding_stage": 4}, "sharding stage: expected"),
                    ({"sharding_stage": 1, "sharding_degree": 0}, "sharding degree"),
                    ({"batch_size": 0}, "batch size: expected")):
        args = {"batch_size": 1, **kw}
        with pytest.raises(ConfigError, match=msg):
            mp.memory_plan(TINY, args.pop("batch_size"), **args)


def test_cli_report_and_errors():
    r = run_tool("model_info", ["ViT_large_patch16_224", "--memory", "--batch-size", "32",
                                "--precision", "O2", "--sharding-stage", "2",
                                "--sharding-degree", "8", "--device-memory", "40GB"])
    assert r.returncode == 0, r.stderr
    plan = mp.memory_plan(VARIANTS["ViT_large_patch16_224"].spec, 32, precision="O2",
                          sharding_stage=2, sharding_degree=8)
    for label, key in (("parameters", "params"), ("gradients", "grads"),
                       ("master weights", "master"), ("optimizer moments", "moments"),
                       ("total", "total")):
        m = re.search(rf"^  {label} +([\d.]+) (GiB|MiB)", r.stdout, re.M)
        value = float(m.group(1)) * (2**30 if m.group(2) == "GiB" else 2**20)
        assert abs(value - plan[key]) <= 0.01 * 2**30, label
    best = mp.max_batch(VARIANTS["ViT_large_patch16_224"].spec, 40 * 10**9, precision="O2",
                        sharding_stage=2, sharding_degree=8)
    assert f"largest micro-batch {best}" in r.stdout and "sharding stage 2 x 8" in r.stdout
    r = run_tool("model_info", ["ViT_tiny_patch16_224", "--memory", "--device-memory", "abc"])
    assert r.returncode == 2 and "got 'abc'" in r.stderr and "Traceback" not in r.stderr


def test_benchmark_section_format():
    r = run_tool("benchmark", ["memory", "--models", "ViT_tiny_patch4_32", "--batch-sizes", "2",
                               "--recompute", "off"])
    assert r.returncode == 0, r.stderr[-2000:]
    lines = r.stdout.strip().splitlines()
    assert lines[0].startswith("memory: one AdamW training step")
    assert lines[1].split() == ["model", "batch", "recompute", "plan", "act", "meas", "act",
                                "ratio", "plan", "tot", "meas", "tot", "ratio", "RSS", "grow"]
    row = lines[2].split()
    assert row[:3] == ["ViT_tiny_patch4_32", "2", "off"] and len(row) == 10
    plan_act, act, ratio = float(row[3]), float(row[4]), float(row[5])
    assert abs(ratio - plan_act / act) < 0.03 and 1.0 <= ratio < 1.3  # columns rounded
