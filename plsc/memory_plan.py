"""Per-device training memory of a ViT, before launch: does a run fit, and what batch does.

Everything is derived from the architecture (plsc/vit_spec.ViTSpec): parameter count, widths,
depth, tokens. Per device, for one training step:
  * parameters: fp32, or half (2 bytes) under O2/bf16 except the LayerNorm parameters, which
    the engine keeps in fp32 (plsc/engine/amp.py);
  * gradients: the parameters' dtype;
  * master weights: fp32 copies under O2/bf16 (the optimizer's multi_precision);
  * optimizer moments: fp32, 2 per parameter for AdamW, 1 for Momentum;
  * activations: the tensors our ViT's forward keeps for backward (`block_tensors`, derived from
    Paddle's gradient rules and checked to the byte against Paddle's CPU allocator for fp32),
    plus the transient working set of the backward pass (`working_set`);
  * sharding (ZeRO) over `degree` devices: stage 1 divides moments and master weights by the
    degree, stage 2 also gradients, stage 3 also parameters.
Not counted here, but reserved by `max_batch`: the CUDA context, cuBLAS/cuDNN/NCCL workspaces
and allocator fragmentation (OVERHEAD_FIXED + OVERHEAD_FRACTION of the device).

Attention: on GPU the model runs Paddle's fused attention ('sdpa'), which for fp16/bf16 is
flash attention and keeps no [B, H, N, N] tensor; for fp32 Paddle falls back to the explicit
math. `attn_impl='auto'` models that: 'flash' in half precision, 'math' in fp32 (and on CPU).

Public API (plain functions returning dicts/ints):
    parse_size("80GB") -> bytes          memory_plan(spec, batch_size, ...) -> dict
    block_tensors(spec, batch, ...) -> [(name, bytes)]   max_batch(spec, device_bytes, ...)
"""
import math
import re

from .errors import ConfigError
from .vit_spec import state_shapes

PRECISIONS = ("fp32", "O1", "O2", "bf16")
MOMENTS = {"AdamW": 2, "Momentum": 1}
ATTN_IMPLS = ("auto", "math", "flash")
# Reserved on a device before any tensor: CUDA context (~0.5 GB), cuBLAS/cuDNN workspaces and
# NCCL buffers (~1 GB), and 10% of the rest for the caching allocator's fragmentation.
OVERHEAD_FIXED = int(1.5 * 2**30)
OVERHEAD_FRACTION = 0.10
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def parse_size(text):
    """Bytes of '80GB', '40 GiB', '1.5TB' (GB = 10^9, GiB = 2^30; a bare number is bytes)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([A-Za-z]*)\s*", str(text))
    unit = m.group(2).upper() if m else None
    if not m or unit not in _UNITS or float(m.group(1)) <= 0:
        raise ConfigError(f"memory size: expected a positive number with a unit such as 80GB, "
                          f"40GiB or 1.5TB, got '{text}'")
    return int(float(m.group(1)) * _UNITS[unit])


def _dtypes(precision):
    """Bytes of (compute-dtype activations, parameters, gradients) at a precision."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision: expected one of {', '.join(PRECISIONS)}, got '{precision}'")
    act = 4 if precision == "fp32" else 2
    param = 2 if precision in ("O2", "bf16") else 4
    return act, param, param


def resolve_attn_impl(attn_impl, precision):
    if attn_impl not in ATTN_IMPLS:
        raise ConfigError(f"attention: expected one of {', '.join(ATTN_IMPLS)}, got '{attn_impl}'")
    if attn_impl == "auto":
        return "math" if precision == "fp32" else "flash"
    return attn_impl


def block_tensors(spec, batch, precision="fp32", attn_impl="math", rates=(0.0, 0.0, 0.0)):
    """[(name, bytes)] one transformer block keeps for backward, its input included.

    rates = (drop_rate, attn_drop_rate, drop_path_rate). LayerNorm and softmax run in fp32 at
    every precision (plsc/engine/amp.py), so their saved inputs/outputs are 4 bytes; a matmul
    saves its (half-precision cast) input; masks are 1 byte. In fp32 the softmax output is also
    the A V matmul's input (kept once); in half precision the matmul keeps its fp16 copy.
    Under O1 every matmul also keeps the fp16 cast of its fp32 weight."""
    act = _dtypes(precision)[0]
    drop, attn_drop, drop_path = rates
    B, N, D, H, M = batch, spec.num_tokens, spec.embed_dim, spec.num_heads, spec.mlp_dim
    bnd, bnm, bhnn = B * N * D, B * N * M, B * H * N * N
    t = [("block input (norm1 input, fp32)", 4 * bnd), ("norm1/norm2 mean+var", 4 * 4 * B * N),
         ("qkv input", act * bnd), ("q, k, v", act * 3 * bnd)]
    if attn_impl == "flash":
        t += [("attention output", act * bnd), ("softmax logsumexp", 4 * B * H * N)]
    else:
        t += [("qkv output (head permutation input)", act * 3 * bnd),
              ("softmax output [B,H,N,N] (fp32)", 4 * bhnn)]
        if attn_drop:
            t += [("attention dropout mask", bhnn), ("dropped probs (A V input)", act * bhnn)]
        elif act != 4:
            t += [("probs fp16 copy (A V input)", act * bhnn)]
        t += [("A V output (head merge input)", act * bnd), ("proj input", act * bnd)]
    t += [("norm2 input (fp32)", 4 * bnd), ("fc1 input", act * bnd),
          ("MLP hidden before GELU", act * bnm), ("MLP hidden after GELU (fc2 input)", act * bnm)]
    if drop:
        t += [("dropout masks (proj, fc1, fc2)", 2 * bnd + bnm)]
    if drop_path:
        t += [("drop-path inputs (2 branches)", act * 2 * bnd)]
    if precision == "O1":
        t += [("fp16 weight casts", 2 * (3 * D * D + D * D + 2 * D * M))]
    return t


def working_set(spec, batch, precision="fp32", attn_impl="math"):
    """Transient bytes on top of the kept activations at the backward's peak: the gradients of
    one block's largest tensors alive at once (scores and probabilities, or the MLP hidden)."""
    act = _dtypes(precision)[0]
    B, N, D, H, M = batch, spec.num_tokens, spec.embed_dim, spec.num_heads, spec.mlp_dim
    attn = 0 if attn_impl == "flash" else 2 * 4 * B * H * N * N
    return max(attn, 2 * act * B * N * M) + 2 * 4 * B * N * D


def outside_tensors(spec, batch, precision="fp32", drop=0.0):
    """[(name, bytes)] kept outside the blocks: the images (fp32, and the conv's half copy),
    the position-dropout mask, the final LayerNorm's input, the head's input and the loss's
    softmax."""
    act = _dtypes(precision)[0]
    B, N, D = batch, spec.num_tokens, spec.embed_dim
    image = B * spec.in_chans * spec.img_size ** 2
    t = [("images", 4 * image + (act * image if act != 4 else 0)),
         ("final norm input (fp32)", 4 * B * N * D + 8 * B * N),
         ("head input", act * B * spec.num_features),
         ("logits and softmax", 2 * 4 * B * max(spec.class_num, 1))]
    if drop:
        t += [("position dropout mask", B * N * D)]
    return t


def activation_bytes(spec, batch, precision="fp32", recompute=False, attn_impl="auto",
                     rates=(0.0, 0.0, 0.0)):
    """{'blocks', 'outside', 'working', 'total'} activation bytes of one step at `batch`.
    `recompute`: False, True (every block) or K (blocks 0, K, 2K, ..., as the model's
    set_grad_checkpointing(interval=K)). A recomputed block keeps only its input; the backward
    reruns one block at a time, whose full set then exists once."""
    impl = resolve_attn_impl(attn_impl, precision)
    one_block = sum(b for _, b in block_tensors(spec, batch, precision, impl, rates))
    # What recompute keeps of a block: its input, in the residual stream's dtype (the
    # parameters' dtype: half under O2/bf16, fp32 under O1, where residual adds promote).
    block_input = _dtypes(precision)[1] * batch * spec.num_tokens * spec.embed_dim
    interval = int(recompute)
    n_rc = -(-spec.depth // interval) if interval > 0 else 0
    blocks = n_rc * block_input + (spec.depth - n_rc) * one_block + (one_block if n_rc else 0)
    outside = sum(b for _, b in outside_tensors(spec, batch, precision, rates[0]))
    working = working_set(spec, batch, precision, impl)
    return {"blocks": blocks, "outside": outside, "working": working,
            "total": blocks + outside + working, "attn_impl": impl}


def _param_split(spec):
    """(LayerNorm parameters, other parameters): O2 keeps the norms in fp32."""
    shapes = state_shapes(spec)
    norms = sum(math.prod(s) for n, s in shapes.items() if ".norm" in "." + n)
    return norms, sum(math.prod(s) for s in shapes.values()) - norms


def check_sharding(stage, degree):
    if stage not in (0, 1, 2, 3):
        raise ConfigError(f"sharding stage: expected 0 (none), 1, 2 or 3, got {stage}")
    if degree < 1:
        raise ConfigError(f"sharding degree: expected an integer >= 1, got {degree}")


def state_bytes(spec, precision="fp32", optimizer="AdamW", sharding_stage=0, sharding_degree=1):
    """{'params', 'grads', 'master', 'moments'} per-device bytes of the model state."""
    if optimizer not in MOMENTS:
        raise ConfigError(f"optimizer: expected one of {', '.join(MOMENTS)}, got '{optimizer}'")
    check_sharding(sharding_stage, sharding_degree)
    _, pbytes, gbytes = _dtypes(precision)
    norms, rest = _param_split(spec)
    n = norms + rest
    half = pbytes == 2
    params = 4 * norms + pbytes * rest
    grads = 4 * norms + gbytes * rest
    master = 4 * rest if half else 0
    moments = 4 * MOMENTS[optimizer] * n
    degree = sharding_degree if sharding_stage else 1
    div = {name: (degree if sharding_stage >= stage else 1)
           for name, stage in (("moments", 1), ("master", 1), ("grads", 2), ("params", 3))}
    return {"params": math.ceil(params / div["params"]), "grads": math.ceil(grads / div["grads"]),
            "master": math.ceil(master / div["master"]),
            "moments": math.ceil(moments / div["moments"]), "num_params": n}


def memory_plan(spec, batch_size, precision="fp32", optimizer="AdamW", sharding_stage=0,
                sharding_degree=1, recompute=False, attn_impl="auto", rates=(0.0, 0.0, 0.0)):
    """Per-device bytes of one training step at micro-batch `batch_size`: the state_bytes
    entries, 'activations' (activation_bytes) and 'total'."""
    if batch_size < 1:
        raise ConfigError(f"batch size: expected an integer >= 1, got {batch_size}")
    if spec.resnet_layers is not None:
        raise ConfigError("the memory planner models plain ViTs; the ResNet stem of hybrid "
                          "models is not modelled")
    state = state_bytes(spec, precision, optimizer, sharding_stage, sharding_degree)
    acts = activation_bytes(spec, batch_size, precision, recompute, attn_impl, rates)
    total = sum(state[k] for k in ("params", "grads", "master", "moments")) + acts["total"]
    return {**state, "activations": acts["total"], "activation_parts": acts, "total": total,
            "batch_size": batch_size, "precision": precision, "optimizer": optimizer,
            "sharding_stage": sharding_stage, "sharding_degree": sharding_degree,
            "recompute": recompute, "attn_impl": acts["attn_impl"]}


def settings_from_config(cfg):
    """memory_plan keywords (and 'batch_size') a validated config implies: the per-device
    micro-batch, FP16 level/dtype, optimizer, sharding and recompute interval (blocks named in
    recompute.names on top of the interval are not counted: the estimate errs high)."""
    from .data.loader import micro_batch_size

    fp16, strategy, g = cfg["FP16"], cfg["DistributedStrategy"], cfg["Global"]
    precision = {"O0": "fp32", "O1": "O1", "O2": "O2"}[fp16["level"]]
    if precision == "O2" and fp16["dtype"] == "bfloat16":
        precision = "bf16"
    sharding = strategy.get("sharding") or {}
    recompute = strategy["recompute"]
    if isinstance(recompute, dict):
        recompute = recompute["layerlist_interval"]
    out = {"precision": precision, "optimizer": (cfg.get("Optimizer") or {}).get("name", "AdamW"),
           "sharding_stage": sharding.get("sharding_stage", 0) if sharding else 0,
           "sharding_degree": sharding.get("sharding_degree", 1) if sharding else 1,
           "recompute": int(recompute)}
    sampler = (((cfg.get("DataLoader") or {}).get("Train") or {}).get("sampler") or {})
    if isinstance(sampler.get("batch_size"), int):
        out["batch_size"] = micro_batch_size(sampler["batch_size"], g["accum_steps"],
                                             "DataLoader.Train")
    return out


def usable_bytes(device_bytes):
    """What tensors may use of a device after the stated overhead allowance."""
    return int((device_bytes - OVERHEAD_FIXED) * (1 - OVERHEAD_FRACTION))


def max_batch(spec, device_bytes, **plan_kwargs):
    """Largest micro-batch whose memory_plan total fits usable_bytes(device_bytes) (0: none).
    Activations grow linearly with the batch, so two plans give the slope; the answer is then
    confirmed against the plan itself."""
    budget = usable_bytes(device_bytes)
    one, two = (memory_plan(spec, b, **plan_kwargs)["total"] for b in (1, 2))
    per_sample, fixed = two - one, 2 * one - two
    if fixed + per_sample > budget:
        return 0
    b = max(1, (budget - fixed) // per_sample)
    while b > 1 and memory_plan(spec, b, **plan_kwargs)["total"] > budget:
        b -= 1
    while memory_plan(spec, b + 1, **plan_kwargs)["total"] <= budget:
        b += 1
    return int(b)
