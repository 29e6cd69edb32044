"""ZeRO stage 3's slicing arithmetic (plsc/engine/shard_slices.py) against two references:
Paddle's own code (GroupShardedStage3._param2align and _flatten_layer_params, run on stand-in
parameters: they are plain arithmetic, no device needed) and the rule re-derived here from its
source (paddle/distributed/fleet/meta_parallel/sharding/group_sharded_stage3.py, Paddle 3.3:
`alignment`, `_param2align`, `_flatten_layer_params`, `_param_storage`)."""
from types import SimpleNamespace

import numpy as np
import paddle
import pytest

from plsc.engine import shard_slices as ss

# awkward sizes: below the world size, prime, exactly one alignment unit, one past it, ViT-ish
NUMELS = [1, 2, 3, 7, 64, 65, 127, 128, 129, 1000, 4099, 768 * 3072 + 1]
WORLDS = [1, 2, 3, 4, 8]
ITEMSIZE = {paddle.float16: 2, paddle.bfloat16: 2, paddle.float32: 4}


class _Param:
    """What _flatten_layer_params reads of a parameter (hashable: Paddle keeps them in a set)."""

    def __init__(self, name, numel, dtype):
        self.name, self.numel, self.dtype, self.trainable = name, numel, dtype, True

    def _numel(self):
        return self.numel


def paddle_slicing(numels, world, dtype, device, segment_size=0):
    """Paddle's own {name: [(start, end) per rank]}, buffer sizes and unsliced names, from its
    GroupShardedStage3 methods run on a stand-in `self` (no group, no device, no storage)."""
    from paddle.distributed.fleet.meta_parallel.sharding import group_sharded_stage3 as s3

    fake = SimpleNamespace(_exclude_layer=[], _segment_size=segment_size, _trainable_params={},
                           _param2buffer={}, _param2buffer_size={},
                           _unslice_params=s3.OrderedSet(), _group=SimpleNamespace(nranks=world),
                           _default_device=device, _param_storage=lambda p, size: None)
    fake._param2align = lambda p: s3.GroupShardedStage3._param2align(fake, p)
    params = [_Param(f"p{i}", n, dtype) for i, n in enumerate(numels)]
    had = hasattr(s3, "param2dtype")
    saved = getattr(s3, "param2dtype", None)
    s3.param2dtype = {}  # a module global that GroupShardedStage3.__init__ normally creates
    try:
        s3.GroupShardedStage3._flatten_layer_params(fake, object(), params)
    finally:
        if had:
            s3.param2dtype = saved
        else:
            del s3.param2dtype
    return fake._param2buffer, fake._param2buffer_size, {p.name for p in fake._unslice_params}


def rederived_bounds(numel, itemsize, alignment_bytes, world):
    """The rule as the source states it, written out step by step."""
    size = numel * itemsize
    remaining = size % alignment_bytes
    align = 0 if remaining == 0 else (alignment_bytes - remaining) // itemsize
    offset = align + numel
    buffer_size = offset if offset % world == 0 else offset + world - (offset % world)
    per = buffer_size // world
    return align, buffer_size, [(r * per, (r + 1) * per) for r in range(world)]


@pytest.mark.parametrize("device", ["gpu", "xpu", "cpu"])
@pytest.mark.parametrize("dtype", [paddle.float16, paddle.bfloat16, paddle.float32])
def test_bounds_are_paddles_own(device, dtype):
    itemsize, alignment = ITEMSIZE[dtype], ss.DEVICE_ALIGNMENT[device]
    for world in WORLDS:
        bounds, sizes, unsliced = paddle_slicing(NUMELS, world, dtype, device)
        assert not unsliced and len(bounds) == len(NUMELS)
        for i, numel in enumerate(NUMELS):
            align = ss.align_pad(numel, itemsize, alignment)
            ours = [ss.slice_bounds(numel, world, r, align) for r in range(world)]
            assert ours == bounds[f"p{i}"], (numel, world)
            assert ss.per_rank(numel, world, align) * world == sizes[f"p{i}"]
            assert rederived_bounds(numel, itemsize, alignment, world) == (align, sizes[f"p{i}"],
                                                                          ours)


def test_only_parameters_above_segment_size_are_sliced():
    bounds, _, unsliced = paddle_slicing([ss.SEGMENT_SIZE, ss.SEGMENT_SIZE + 1], 2,
                                         paddle.float32, "gpu", segment_size=ss.SEGMENT_SIZE)
    assert set(bounds) == {"p1"} and unsliced == {"p0"}


@pytest.mark.parametrize("world", WORLDS)
@pytest.mark.parametrize("shape", [(1,), (3,), (7, 5), (65,), (3, 4, 11), (129, 3)])
def test_full_to_shards_to_full_is_exact(world, shape):
    rng = np.random.default_rng(0)
    full = rng.standard_normal(shape).astype(np.float32)
    numel = full.size
    for align in (0, ss.align_pad(numel, 2, 256), ss.align_pad(numel, 4, 4096)):
        shards = [ss.shard_flat(full, world, r, align) for r in range(world)]
        # Paddle's buffer: zeros of the padded size with the flattened tensor at its start
        buffer = np.zeros(ss.per_rank(numel, world, align) * world, np.float32)
        buffer[:numel] = full.reshape(-1)
        for r, shard in enumerate(shards):
            start, end = ss.slice_bounds(numel, world, r, align)
            np.testing.assert_array_equal(shard, buffer[start:end])
        assert sum(ss.valid_length(numel, world, r, align) for r in range(world)) == numel
        back = ss.unshard(shards, numel, shape)
        assert back.shape == shape and back.dtype == full.dtype
        np.testing.assert_array_equal(back, full)


def test_valid_length_marks_exactly_the_real_elements():
    """The padding sits at the end of the buffer: the last rank(s) hold only zeros there."""
    numel, world, align = 10, 4, 3  # buffer 13 -> 16, per 4: ranks hold 4, 4, 2 (+2 pad), 0
    assert [ss.valid_length(numel, world, r, align) for r in range(world)] == [4, 4, 2, 0]
    shards = [ss.shard_flat(np.arange(1, 11), world, r, align) for r in range(world)]
    assert shards[2].tolist() == [9, 10, 0, 0] and shards[3].tolist() == [0, 0, 0, 0]


def test_unshard_refuses_too_few_elements():
    with pytest.raises(ValueError, match="fewer than 10"):
        ss.unshard([np.zeros(4), np.zeros(4)], 10, (10,))


# ------------------------------------------------------------------ stage-3 state on CPU
# sharding_stage3's pure halves, run for every rank of simulated worlds: the whole state of an
# AdamW run is cut into Paddle's stage-3 per-rank state and joined back.
PARAMS = {"linear_0.w_0": (7, 5), "linear_0.b_0": (5,), "pos_embed_0": (1, 13, 3),
          "linear_1.w_0": (3, 4)}
SLICED = ("linear_0.w_0", "pos_embed_0", "linear_1.w_0")  # linear_0.b_0 stays whole


def whole_adamw_state():
    rng = np.random.default_rng(1)
    state = {"LR_Scheduler": {"last_epoch": 3, "last_lr": 0.01},
             "master_weights": {n: rng.standard_normal(s).astype(np.float32)
                                for n, s in PARAMS.items()}}
    for n, s in PARAMS.items():
        state[f"{n}_moment1_0"] = rng.standard_normal(s).astype(np.float32)
        state[f"{n}_moment2_0"] = rng.random(s).astype(np.float32)
        state[f"{n}_beta1_pow_acc_0"] = np.array([0.9 ** 3], np.float32)
        state[f"{n}_beta2_pow_acc_0"] = np.array([0.999 ** 3], np.float32)
    return state


@pytest.mark.parametrize("world", [2, 3, 4])
def test_stage3_state_is_cut_as_paddle_cuts_and_joins_back_exactly(world):
    from plsc.engine import sharding_stage3 as s3
    from plsc.engine.distributed import World

    full = whole_adamw_state()
    numels = [int(np.prod(PARAMS[n])) for n in SLICED]
    bounds, _, _ = paddle_slicing(numels, world, paddle.float16, "gpu")  # O2: fp16 params
    shapes = {n: (list(PARAMS[n]), ss.align_pad(k, 2, 256)) for n, k in zip(SLICED, numels)}
    local = [s3.cut_state(full, shapes, World(r, world)) for r in range(world)]
    for r, state in enumerate(local):
        for i, n in enumerate(SLICED):  # Paddle's names and its buffer, cut by its own bounds
            start, end = bounds[f"p{i}"][r]
            for key, value in ((f"slice@{n}_moment1_0", full[f"{n}_moment1_0"]),
                               (f"slice@{n}", full["master_weights"][n])):
                buffer = np.zeros(end * world, np.float32)
                buffer[:value.size] = value.reshape(-1)
                got = state["master_weights"][key] if key == f"slice@{n}" else state[key]
                np.testing.assert_array_equal(got, buffer[start:end], err_msg=key)
            assert state[f"slice@{n}_beta1_pow_acc_0"].shape == (1,)
            assert f"{n}_moment1_0" not in state
        np.testing.assert_array_equal(state["linear_0.b_0_moment2_0"],
                                      full["linear_0.b_0_moment2_0"])

    def gather(ref, value):  # every simulated rank's entry, in rank order
        return [(s["master_weights"] if ref[0] else s)[ref[1]] for s in local]

    for r in range(world):
        joined = s3.join_state(local[r], shapes, World(r, world), gather)
        assert joined.keys() == full.keys()
        assert joined["LR_Scheduler"] == full["LR_Scheduler"]
        assert joined["master_weights"].keys() == full["master_weights"].keys()
        for n, v in full["master_weights"].items():
            np.testing.assert_array_equal(joined["master_weights"][n], v, err_msg=n)
        for k, v in full.items():
            if k not in ("LR_Scheduler", "master_weights"):
                assert joined[k].shape == v.shape, k
                np.testing.assert_array_equal(joined[k], v, err_msg=k)


class _Stage3Optimizer:
    """What sharding_stage3's norm reads of Paddle's stage-3 optimizer after update_slice."""

    def __init__(self, params):
        self._parameter_list, self.moves = params, 0

    def update_slice(self):
        self.moves += 1


def _with_grad(q, grad):
    (q * paddle.to_tensor(grad)).sum().backward()
    return q


def test_stage3_norm_excludes_padding_and_clips_every_gradient():
    """World 1: the slice of a 7x5 fp16 parameter is 128 long (35 + 93 padding); garbage put in
    the padding must not count. The whole parameter's gradient counts as it is."""
    from plsc.engine import sharding_stage3 as s3
    from plsc.engine.distributed import World
    from plsc.optim import ClipGradByGlobalNorm

    rng = np.random.default_rng(2)
    weight = paddle.create_parameter([7, 5], "float16")
    bias = paddle.create_parameter([5], "float32")  # whole: the optimizer updates it as it is
    align = ss.align_pad(35, 2, 256)
    slice_grad = np.concatenate([rng.standard_normal(35), np.full(align, 1e3)]).astype("float32")
    bias_grad = rng.standard_normal(5).astype("float32")
    bounds, _, _ = paddle_slicing([35], 1, paddle.float16, "gpu")
    dp_model = SimpleNamespace(_default_device="gpu", _param2buffer={weight.name: bounds["p0"]},
                               _layer=SimpleNamespace(parameters=lambda: [weight, bias]))
    weight_slice = paddle.create_parameter([35 + align], "float32", name="slice@" + weight.name)
    opt = _Stage3Optimizer([_with_grad(weight_slice, slice_grad), _with_grad(bias, bias_grad)])
    expected = np.sqrt(np.sum(slice_grad[:35].astype(np.float64) ** 2) + np.sum(bias_grad ** 2.0))
    step_clip = s3.norm_and_clip(ClipGradByGlobalNorm(clip_norm=0.5), opt, dp_model, False,
                                 World())
    norm = step_clip([weight, bias])  # the wrapper passes the whole parameters: not used
    assert opt.moves == 1 and opt.update_scaler is True  # the slices moved, once
    assert norm == pytest.approx(expected, rel=1e-6)
    scale = 0.5 / expected
    np.testing.assert_allclose(opt._parameter_list[0].grad.numpy(), slice_grad * scale, rtol=1e-6)
    np.testing.assert_allclose(opt._parameter_list[1].grad.numpy(), bias_grad * scale, rtol=1e-6)


def test_stage3_layout_refuses_a_paddle_that_cuts_otherwise():
    from plsc.engine import sharding_stage3 as s3
    from plsc.engine.distributed import World
    from plsc.errors import TrainingError

    weight = paddle.create_parameter([7, 5], "float16")
    other_rule = SimpleNamespace(_default_device="gpu", _param2buffer={weight.name: [(0, 35)]},
                                 _layer=SimpleNamespace(parameters=lambda: [weight]))
    with pytest.raises(TrainingError, match="cut parameter .* not as plsc's shard_slices.py"):
        s3.layout(other_rule, World())


def test_stage3_slices_keep_their_weight_decay_exemption():
    """A slice is a parameter named `slice@<name>`: plsc's no-decay rules (by name) must still
    exempt it, for AdamW (paddle's apply_decay_param_fun) and MomentumL2 (its _no_decay)."""
    from plsc.engine import sharding_stage3 as s3
    from plsc.optim.optimizer import MomentumL2

    w = paddle.create_parameter([3], "float32")
    b = paddle.create_parameter([3], "float32")
    adamw = paddle.optimizer.AdamW(parameters=[w, b], weight_decay=0.05,
                                   apply_decay_param_fun=lambda name: name != b.name)
    momentum = MomentumL2(parameters=[w, b], weight_decay=0.05, no_decay=[b.name])
    for opt in (adamw, momentum):
        s3.exempt_slices_too(opt)
    decays = adamw._apply_decay_param_fun
    assert decays(w.name) and decays("slice@" + w.name)
    assert not decays(b.name) and not decays("slice@" + b.name)
    assert momentum._no_decay == {b.name, "slice@" + b.name}
