"""ZeRO stage 3 (parameters, gradients and optimizer state sliced over all processes) with
Paddle's `group_sharded_parallel(level='p_g_os')`: the glue between Paddle's stage-3 objects and
plsc's global-norm step and portable checkpoints. GPU/XPU only.

UNVERIFIED: written to Paddle 3.3's group_sharded_stage3.py and group_sharded_utils.py, never run
(no GPU here). The arithmetic it relies on, how a parameter is cut into slices, is
shard_slices.py, tested on CPU against Paddle's own code; `layout()` checks at run time that
Paddle cut every parameter that way and refuses to go on otherwise.

What Paddle 3.3 does (GroupShardedStage3), and what follows for plsc:
- A parameter with more than segment_size (2**20) elements is flattened, padded and cut; rank r
  keeps its slice as `param.fw_storage` and the whole parameter exists only inside its layer's
  forward/backward (gathered by hooks). Smaller parameters stay whole on every rank; their
  gradients are all-reduced in `step()` and every rank updates them (replicated state).
- At each step the optimizer's parameters become the slices, wrapped as parameters named
  `slice@<name>`: moments `slice@<name>_moment1_0` of shape [per-rank], beta powers [1], fp16
  master weights `slice@<name>`. The padding stays zero (zero gradient, weight and moments).
- After backward a slice's reduced gradient is `param.bw_storage`; `optimizer.update_slice()`
  all-reduces the whole parameters' gradients and moves each slice's gradient onto its
  `slice@` parameter. plsc calls it before the norm (`move_slices`) and sets `update_scaler`,
  which stops `step()` from doing it again, as Paddle's GroupShardedScaler does.
- Checkpoints are consolidated on save (whole parameters and whole moments, the same .pdparams
  and .pdopt as any other run) and cut again on load for this run's world size.
"""
import contextlib

import numpy as np
import paddle
import paddle.distributed as dist

from ..errors import TrainingError
from ..weights import assign
from . import distributed
from . import shard_slices as ss

SLICE = "slice@"  # Paddle's name prefix of a slice wrapped as a parameter (_TensorWrapper)
ITEMSIZE = {"float16": 2, "bfloat16": 2, "float32": 4}


def is_stage3(optimizer):
    return hasattr(optimizer, "update_slice")  # set by GroupShardedStage3 (_OptimizerWrapper)


def unsliced_name(name):
    return name[len(SLICE):] if name.startswith(SLICE) else name


def exempt_slices_too(optimizer):
    """Weight-decay exemptions are by parameter name, and a slice is named `slice@<name>`: make
    them see through the prefix (else a big no-decay parameter, such as a large position
    embedding, would be decayed once sliced)."""
    fun = getattr(optimizer, "_apply_decay_param_fun", None)  # paddle AdamW
    if fun is not None:
        optimizer._apply_decay_param_fun = lambda name: fun(unsliced_name(name))
    if hasattr(optimizer, "_no_decay"):  # plsc's MomentumL2
        optimizer._no_decay = optimizer._no_decay | {SLICE + n for n in optimizer._no_decay}


def layout(dp_model, world):
    """{paddle name: (shape, align)} of the sliced parameters, after checking that Paddle cut
    each as shard_slices.py says (a Paddle with another rule is refused, not misread)."""
    alignment = ss.DEVICE_ALIGNMENT.get(dp_model._default_device)
    out = {}
    for p in dp_model._layer.parameters():
        bounds = dp_model._param2buffer.get(p.name)
        if bounds is None or p.name in out:
            continue
        numel = int(np.prod(p.shape))
        itemsize = ITEMSIZE.get(str(p.dtype).replace("paddle.", ""))
        align = ss.align_pad(numel, itemsize, alignment) if alignment and itemsize else 0
        ours = [ss.slice_bounds(numel, world.size, r, align) for r in range(world.size)]
        if not (alignment and itemsize) or ours != [tuple(b) for b in bounds]:
            raise TrainingError(
                f"ZeRO stage 3: Paddle {paddle.__version__} cut parameter {p.name} "
                f"({p.dtype}, {numel} elements) as {list(bounds)[:2]}..., not as plsc's "
                "shard_slices.py (Paddle 3.3's rule) says; its state could not be saved whole")
        out[p.name] = (list(p.shape), align)
    return out


def _step_params(optimizer):
    groups = getattr(optimizer, "_param_groups", None)
    if groups and isinstance(groups[0], dict):
        return [q for g in groups for q in g["params"]]
    return list(optimizer._parameter_list)


def move_slices(optimizer):
    """Paddle's step preparation, done before the norm: whole parameters' gradients
    all-reduced, each slice's gradient on its `slice@` parameter (once per step)."""
    optimizer.update_slice()
    optimizer.update_scaler = True


class GroupScaler:
    """The GradScaler for the wrapper's explicit `unscale_` under group_sharded_parallel
    (stages 2 and 3). Paddle's GroupShardedScaler replaces the scaler's `_unscale` with one that
    moves stage 3's slices first and all-reduces found-inf over the group, but
    `GradScaler.unscale_` calls the class's `_unscale` (super()), which does neither: each rank
    would check only its own share and keep its own found-inf, and on a skipped step the ranks'
    loss scales would part. Here: move the slices (stage 3), unscale, and take found-inf over
    all ranks, so every rank's scale follows the same steps."""

    def __init__(self, scaler, stage3):
        self._scaler, self._stage3 = scaler, stage3

    def unscale_(self, optimizer):
        if self._stage3:
            move_slices(optimizer)
        if not self._scaler.is_enable():
            return
        self._scaler.unscale_(optimizer)
        found = self._scaler._found_inf.cast("int32")
        dist.all_reduce(found, op=dist.ReduceOp.MAX)
        self._scaler._found_inf = found.cast("bool")

    def __getattr__(self, name):  # scale, step, update, state_dict, ...: the GradScaler's own
        return getattr(self._scaler, name)


def norm_and_clip(clip, optimizer, dp_model, scaler_moves, world):
    """The global gradient norm and clip of a stage-3 step: sqrt(all-reduced sum of squares
    over this rank's slices, padding excluded, + the squares of the whole parameters, equal on
    every rank). `scaler_moves`: GroupScaler.unscale_ already moved the slices."""
    max_norm = getattr(clip, "clip_norm", None)
    shapes = layout(dp_model, world)
    valid = {SLICE + n: ss.valid_length(int(np.prod(s)), world.size, world.rank, a)
             for n, (s, a) in shapes.items()}

    @paddle.no_grad()
    def run(_params):  # the whole parameters hold no gradients under stage 3: see above
        if not scaler_moves:
            move_slices(optimizer)
        zero = paddle.zeros([], "float32")
        sliced, whole, grads = [zero], [zero], []
        for q in _step_params(optimizer):
            if q.grad is None:
                continue
            grads.append(q.grad)
            g = q.grad.astype("float32").reshape([-1])
            if q.name in valid:
                sliced.append(paddle.sum(paddle.square(g[:valid[q.name]])))
            else:
                whole.append(paddle.sum(paddle.square(g)))
        part = float(paddle.add_n(sliced))
        total = float(np.sqrt(distributed.all_reduce_sum([part], world)[0]
                              + float(paddle.add_n(whole))))
        if max_norm is not None and max_norm < total < float("inf"):
            for g in grads:
                g.scale_(max_norm / total)
        return total

    return run


# ------------------------------------------------------------------ whole weights
def _sliced_params(dp_model, shapes):
    return [p for p in dp_model._layer.parameters() if p.name in shapes]


@contextlib.contextmanager
def whole_weights(dp_model, world):
    """The model's parameters whole (host copies) inside the block, Paddle's own save path
    (get_all_parameters(convert2cpu=True), as save_group_sharded_model); a collective. After
    it the copies are dropped: the slices were not changed, and a sliced parameter holds no
    data between its layer's uses (as after Paddle's _param_storage)."""
    shapes = layout(dp_model, world)
    dp_model.get_all_parameters(convert2cpu=True)
    try:
        yield shapes
    finally:
        for p in _sliced_params(dp_model, shapes):
            p._clear_data()


def assign_weights(dp_model, model, optimizer, state, source, world):
    """plsc.weights.assign for a stage-3 model: every rank writes its slice of each whole
    parameter into `fw_storage` and refreshes the fp32 master weights Paddle made at wrap time
    (a .pdopt with master weights overrides them when the optimizer state is loaded)."""
    masters = getattr(optimizer, "_master_weights", None) or {}
    with whole_weights(dp_model, world) as shapes, paddle.no_grad():
        casts = assign(model, state, source)
        for key, p in model.named_parameters():
            full = np.asarray(state[key], dtype=np.float32)
            if p.name in shapes:
                part = ss.shard_flat(full, world.size, world.rank, shapes[p.name][1])
                p.fw_storage.set_value(paddle.to_tensor(part).astype(p.fw_storage.dtype))
                full = part
            master = masters.get(SLICE + p.name if p.name in shapes else p.name)
            if master is not None:
                master.set_value(paddle.to_tensor(full))
    return casts


# ------------------------------------------------------------------ optimizer state
# The halves are pure (numpy in, numpy out) but for `gather`, so tests/test_shard_slices.py runs
# them for several simulated ranks on CPU.
def _whole(ref, value, shapes, world, gather):
    """(plain key, whole numpy value) of one local state entry `ref` = (is_master, key): a slice
    of a moment or master weight is joined from every rank's (`gather`); the rest is equal on
    every rank (beta powers, whole parameters' state)."""
    key = ref[1]
    name = unsliced_name(key)
    param = name if ref[0] else ss.param_of(name, shapes)
    if not key.startswith(SLICE) or param not in shapes:
        return name, np.asarray(value)
    shape, align = shapes[param]
    numel = int(np.prod(shape))
    if list(value.shape) != [ss.per_rank(numel, world.size, align)]:
        return name, np.asarray(value)  # a beta power: one value per parameter
    return name, ss.unshard(gather(ref, value), numel, shape)


def join_state(local, shapes, world, gather):
    """The whole state (plain paddle names) from this rank's stage-3 state `local`; a collective
    through `gather(ref, value)` -> every rank's value in rank order, called for the same
    entries in the same (sorted) order on every rank: every rank holds every key."""
    masters = local.get("master_weights") or {}
    entries = [((False, k), v) for k, v in local.items() if k != "master_weights"]
    entries += [((True, k), v) for k, v in masters.items()]
    out = {}
    for ref, value in sorted(entries, key=lambda e: e[0]):
        if isinstance(value, dict):  # LR_Scheduler
            out[ref[1]] = value
            continue
        name, whole = _whole(ref, value, shapes, world, gather)
        (out.setdefault("master_weights", {}) if ref[0] else out)[name] = whole
    return out


def _cut(key, param, value, shapes, world):
    """(stage-3 key, this rank's value) of one whole state entry."""
    if param not in shapes:
        return key, value
    shape, align = shapes[param]
    arr = np.asarray(value)
    if arr.size == int(np.prod(shape)):  # a moment or master weight, not a beta power
        arr = ss.shard_flat(arr, world.size, world.rank, align)
    return SLICE + key, arr


def cut_state(state, shapes, world):
    """This rank's stage-3 state from a whole one (plain paddle names, from any run): each
    sliced parameter's moments and master weight cut to this rank's slice, padded as Paddle
    pads, under Paddle's `slice@` names."""
    local = {}
    for key, value in state.items():
        if key == "master_weights":
            local[key] = dict(_cut(k, k, v, shapes, world) for k, v in value.items())
        else:
            k, v = _cut(key, ss.param_of(key, shapes), value, shapes, world)
            local[k] = v
    return local


def _all_gather(ref, value):
    parts = []
    dist.all_gather(parts, value)
    return [t.numpy() for t in parts]


def gather_state(optimizer, dp_model, world):
    """The whole optimizer state (plain paddle names, as an unsharded run's) on rank 0, {} on
    the others. A collective."""
    out = join_state(optimizer.state_dict(), layout(dp_model, world), world, _all_gather)
    return out if world.is_main else {}


def set_state(optimizer, dp_model, state, world):
    """Load a whole optimizer state into this rank's stage-3 optimizer."""
    local = cut_state(state, layout(dp_model, world), world)
    masters = local.pop("master_weights", None)
    local = {k: paddle.to_tensor(v) if isinstance(v, np.ndarray) else v for k, v in local.items()}
    if masters is not None:
        local["master_weights"] = {k: paddle.to_tensor(np.asarray(v, dtype=np.float32))
                                   for k, v in masters.items()}
    optimizer.set_state_dict(local)
