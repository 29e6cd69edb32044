"""ZeRO sharding of the optimizer (DistributedStrategy.sharding) with Paddle's own sharding, and
the optimizer state moved between a sharded run and a portable checkpoint.

    DistributedStrategy:
      sharding: {sharding_stage: 1, sharding_degree: 2}   # degree: null = all processes

Stage 1 (optimizer state sharded; every device holds all weights and gradients) uses Paddle's
fleet `DygraphShardingOptimizer` directly, under a plain `paddle.DataParallel` model, and NOT
`fleet.distributed_optimizer`. Why: the fleet HybridParallelOptimizer reduces each gradient to
its owner inside `step()` and clips with its own HybridParallelClipGrad, so a global norm taken
before `step()` (ours: one norm over ALL parameters, and the all-rank non-finite decision of
optim_wrapper.py) would see unreduced local gradients. With DataParallel the gradients are
all-reduced in backward exactly as in plain data parallelism (no_sync keeps accumulation to one
all-reduce per step), so every rank holds the full averaged gradients and the wrapper's norm,
clip and skip decision are unchanged; `DygraphShardingOptimizer.step()` then updates only the
parameters this rank owns (AdamW moments for those only) and broadcasts each updated parameter
from its owner. Measured on CPU/gloo: bitwise equal to plain data parallelism.
A sharding_degree N below the world size W gives W/N data-parallel replicas of N shards
(fleet hybrid_configs dp_degree W/N, sharding_degree N): GPU only, because creating the
sub-groups (sharding [0,1],[2,3] of 4 processes) fails in Paddle 3.3's gloo backend (connection
refused in gloo's rendezvous; plain `dist.new_group` shows it too), so on CPU it is refused.

fp16 (GPU, unverified here): GradScaler.unscale_ walks the sharding optimizer's FULL parameter
list (its `_parameter_list`), so every rank unscales and checks all gradients, which are
identical after the all-reduce; the wrapper all-reduces its own non-finite flag on top, so all
shards agree on found-inf before anything steps.

Stage 2 (gradients sharded too) uses `paddle.distributed.sharding.group_sharded_parallel`
(level 'os_g'), GPU/XPU only; written to Paddle's documentation, not run here (no GPU): each
rank keeps only the reduced gradients it owns, so the global norm is the all-reduced sum of the
owned squares (`sharded_clip`); under fp16 the scaler's found-inf is all-reduced over the group
(sharding_stage3.GroupScaler: GradScaler.unscale_ bypasses Paddle's GroupShardedScaler, which
would), and the wrapper's all-rank flag follows the all-reduced norm. Accumulation
reduces every micro-batch (the stage-2 model has no no_sync). `offload` exists only in
group_sharded_parallel, for pure fp16 (FP16.level O2, float16); plsc offers it with stage 2.

Stage 3 (parameters sliced too) uses group_sharded_parallel (level 'p_g_os'), GPU/XPU only and
unverified: the step's norm, the fp16 scaler and the checkpoints' consolidation are in
sharding_stage3.py. On a CPU build stages 2 and 3 exit with one line naming what they need.

Checkpoints stay portable: `gather_state_dict` collects every rank's shard on rank 0, which
writes the usual .pdopt (stage 3: every rank's slices joined into whole tensors, and whole
weights in the .pdparams); `set_state_dict` takes this rank's entries from such a full state
(stage 3: cuts them to this rank's slices), so a set written with any sharding and world size
loads with any other.
"""
import contextlib
import logging
import warnings
from dataclasses import dataclass

import numpy as np
import paddle

from ..errors import ConfigError
from ..weights import assign
from . import distributed
from . import sharding_stage3 as stage3
from .shard_slices import SEGMENT_SIZE, param_of

KEY = "DistributedStrategy.sharding"


@dataclass(frozen=True)
class Plan:
    stage: int
    degree: int  # processes that share one copy of the optimizer state
    offload: bool


def plan(sharding_cfg, world, device, fp16_cfg, log):
    """The sharding this run does, or None (no section, or nothing to shard). Raises ConfigError
    for what cannot run here, before anything is built."""
    if not sharding_cfg:
        return None
    stage, degree = sharding_cfg["sharding_stage"], sharding_cfg.get("sharding_degree")
    offload = bool(sharding_cfg.get("offload"))
    if stage in (2, 3) and device not in ("gpu", "xpu"):
        raise ConfigError(f"{KEY}.sharding_stage {stage} needs a GPU build of Paddle "
                          "(group_sharded_parallel runs on GPU/XPU only); use sharding_stage 1 "
                          "on CPU")
    if offload and stage != 2:
        # stage 3's offloaded master weights live outside the optimizer state: not consolidated
        raise ConfigError(f"{KEY}.offload needs sharding_stage 2 (Paddle offloads optimizer "
                          "state only in group_sharded_parallel, and stage 3's offloaded master "
                          "weights would not be saved whole)")
    fp16 = fp16_cfg or {}
    if offload and (fp16.get("level") != "O2" or fp16.get("dtype", "float16") != "float16"):
        raise ConfigError(f"{KEY}.offload needs FP16.level O2 with dtype float16 (Paddle "
                          "offloads the fp32 master weights of pure fp16 training only)")
    degree = world.size if degree is None else degree
    if world.size % degree:
        raise ConfigError(f"{KEY}.sharding_degree={degree} must divide the number of processes "
                          f"({world.size})")
    if 1 < degree < world.size and device == "cpu":  # measured: 4 of 4 attempts failed
        raise ConfigError(f"{KEY}.sharding_degree={degree} of {world.size} processes needs "
                          "process sub-groups, which Paddle's CPU backend (gloo) fails to create; "
                          f"on CPU shard over all processes (sharding_degree {world.size} or "
                          "null)")
    if stage in (2, 3) and degree != world.size:
        raise ConfigError(f"{KEY}.sharding_degree={degree}: sharding_stage {stage} shards over all "
                          f"{world.size} processes (set sharding_degree to {world.size} or null)")
    if degree == 1:
        log(f"{KEY}: sharding_degree 1 ({world.size} process(es)): nothing to shard, every "
            "device keeps the whole optimizer state")
        return None
    return Plan(stage, degree, offload)


@contextlib.contextmanager
def _quiet_fleet():
    """fleet's set-up logs its topology at INFO and warns about NCCL-only options (reduce_avg)
    and groups a rank is not in: notes for Paddle developers, not for people training."""
    from paddle.distributed.fleet.utils.log_util import logger

    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            yield
    finally:
        logger.setLevel(level)


def _stage1(p, model, optimizer, world):
    from paddle.distributed import fleet
    from paddle.distributed.fleet.meta_optimizers.dygraph_optimizer.dygraph_sharding_optimizer \
        import DygraphShardingOptimizer

    strategy = fleet.DistributedStrategy()
    strategy.hybrid_configs = {"dp_degree": world.size // p.degree, "sharding_degree": p.degree,
                               "mp_degree": 1, "pp_degree": 1}
    with _quiet_fleet():
        fleet.init(is_collective=True, strategy=strategy)
        sharded = DygraphShardingOptimizer(optimizer, fleet.get_hybrid_communicate_group())
    return paddle.DataParallel(model), sharded


def _group_sharded(p, model, optimizer, scaler):
    """Stages 2 and 3: GPU/XPU only; unverified here (see the module docstring)."""
    from paddle.distributed import fleet
    from paddle.distributed.sharding import group_sharded_parallel

    level = {2: "os_g", 3: "p_g_os"}[p.stage]
    if p.stage == 3:
        stage3.exempt_slices_too(optimizer)
    with _quiet_fleet():
        fleet.init(is_collective=True)
        model, optimizer, scaler = group_sharded_parallel(model, optimizer, level, scaler=scaler,
                                                          offload=p.offload)
    if scaler is not None:
        scaler = stage3.GroupScaler(scaler, stage3=p.stage == 3)
    return model, optimizer, scaler


def wrap(p, model, optimizer, scaler, world):
    """(model as called in training, optimizer, scaler) for plan `p` (None: plain DP)."""
    if p is None:
        return distributed.wrap_model(model, world), optimizer, scaler
    if p.stage == 1:
        dp_model, optimizer = _stage1(p, model, optimizer, world)
        return dp_model, optimizer, scaler
    return _group_sharded(p, model, optimizer, scaler)


def step_clip(p, clip, dp_model, optimizer, scaler, world):
    """The norm-and-clip callable the wrapper calls before a step under plan `p`: the plain
    `clip` where every rank holds the whole averaged gradients (no plan, stage 1), else one
    that all-reduces the squares of each rank's share."""
    if p is None or p.stage == 1:
        return clip
    if p.stage == 2:
        return sharded_clip(clip, world)
    return stage3.norm_and_clip(clip, optimizer, dp_model, scaler is not None, world)


def describe(p, optimizer):
    """One log line: how many parameters' optimizer state this rank holds."""
    if p.stage == 3:
        return (f"ZeRO stage 3: parameters, gradients and optimizer state sliced over {p.degree} "
                f"processes (parameters over {SEGMENT_SIZE} elements; smaller ones are "
                "whole on every rank)")
    owned, total = _owned_names(optimizer), _all_names(optimizer)
    level = {1: "optimizer state", 2: "optimizer state and gradients"}[p.stage]
    return (f"ZeRO stage {p.stage}: {level} sharded over {p.degree} processes; this rank "
            f"holds the state of {len(owned)} of {len(total)} parameters")


# ------------------------------------------------------------------ who owns which state
def is_sharded(optimizer):
    return (hasattr(optimizer, "_param2rank") or hasattr(optimizer, "param2rank")
            or stage3.is_stage3(optimizer))


def _inner(optimizer):
    """The paddle optimizer that holds this rank's state."""
    return optimizer._inner_opt if hasattr(optimizer, "_inner_opt") else optimizer._optim


def _all_names(optimizer):
    if hasattr(optimizer, "_rank2params"):  # stage 1
        return {q.name for ps in optimizer._rank2params.values() for q in ps}
    return set(optimizer.param2rank)


def _owned_names(optimizer):
    """Paddle names of the parameters whose optimizer state lives on this rank."""
    if hasattr(optimizer, "_rank2params"):  # stage 1
        return {q.name for q in optimizer._rank2params[optimizer._sharding_rank]}
    rank = optimizer._rank  # stage 2: GroupShardedOptimizerStage2 (unverified)
    return {n for n, r in optimizer.param2rank.items() if r == rank}


# ------------------------------------------------------------------ checkpoint halves
def whole_weights(dp_model, optimizer, world):
    """A context in which the model's parameters are whole on every rank (stage 3 gathers them
    to the host; every other setting holds them whole already). A collective under stage 3."""
    if stage3.is_stage3(optimizer):
        return stage3.whole_weights(dp_model, world)
    return contextlib.nullcontext()


def assign_weights(model, state, source, dp_model, optimizer, world):
    """plsc.weights.assign; under stage 3 each rank also cuts its slices from `state`."""
    if stage3.is_stage3(optimizer):
        return stage3.assign_weights(dp_model, model, optimizer, state, source, world)
    return assign(model, state, source)


def _state_tensors(state):
    """{key: tensor} of a paddle optimizer state_dict: the per-parameter accumulators, and the
    master weights keyed ("master_weights", name)."""
    out = {k: v for k, v in state.items() if isinstance(v, paddle.Tensor)}
    for name, w in (state.get("master_weights") or {}).items():
        out[("master_weights", name)] = w
    return out


def gather_state_dict(optimizer, world, dp_model=None):
    """The whole optimizer state_dict (paddle names) on rank 0, the writer; {} on the other
    ranks under sharding. A collective: each state tensor is broadcast from a rank that holds it,
    one at a time, so no rank needs more memory than its shard plus one tensor (rank 0 collects
    all of it on the host; all_gather_object would put every shard on every device at once).
    Stage 3 needs the stage-3 model `dp_model` (where Paddle keeps how it sliced)."""
    if not is_sharded(optimizer):
        return optimizer.state_dict()
    if stage3.is_stage3(optimizer):
        return stage3.gather_state(optimizer, dp_model, world)
    local = _inner(optimizer).state_dict()
    mine = _state_tensors(local)
    held = distributed.gather_objects(
        {k: (list(v.shape), str(v.dtype).replace("paddle.", "")) for k, v in mine.items()}, world)
    # not per-parameter (the LR scheduler's state): equal on every rank
    merged = {k: v for k, v in local.items() if k not in mine and k != "master_weights"}
    done = set()
    for src, keys in enumerate(held):  # the same order on every rank
        for key in sorted(set(keys) - done, key=str):
            done.add(key)
            shape, dtype = keys[key]
            value = distributed.broadcast_array(
                mine[key].numpy() if world.rank == src else None, shape, dtype, src)
            if isinstance(key, tuple):
                merged.setdefault("master_weights", {})[key[1]] = value
            else:
                merged[key] = value
    return merged if world.is_main else {}


def set_state_dict(optimizer, state, dp_model=None, world=distributed.World()):
    """Load a full optimizer state (paddle names); a sharded rank keeps only its shard's entries
    (a full state from an unsharded run, or one gathered by gather_state_dict)."""
    if not is_sharded(optimizer):
        optimizer.set_state_dict(state)
        return
    if stage3.is_stage3(optimizer):
        stage3.set_state(optimizer, dp_model, state, world)
        return
    names, owned = _all_names(optimizer), _owned_names(optimizer)
    local = {}
    for key, value in state.items():
        if key == "master_weights":
            local[key] = {k: v for k, v in value.items() if k in owned}
            continue
        param = param_of(key, names)
        if param is None or param in owned:  # None: not per-parameter (LR_Scheduler)
            local[key] = paddle.to_tensor(value) if isinstance(value, np.ndarray) else value
    _inner(optimizer).set_state_dict(local)


def sharded_clip(clip, world):
    """Stage 2: the global norm of gradients of which each rank holds its owned share only:
    sqrt(all-reduced sum of local squares); clipping scales the local share (GPU, unverified)."""
    max_norm = getattr(clip, "clip_norm", None)

    @paddle.no_grad()
    def norm_and_clip(params):
        grads = [q.grad for q in params if q.grad is not None]
        local = sum(float(paddle.sum(paddle.square(g.astype("float32")))) for g in grads)
        total = float(np.sqrt(distributed.all_reduce_sum([local], world)[0]))
        if max_norm is not None and max_norm < total < float("inf"):
            for g in grads:
                g.scale_(max_norm / total)
        return total

    return norm_and_clip
