"""How ZeRO stage 3 (Paddle's GroupShardedStage3) cuts one parameter into per-rank slices, as
pure numpy arithmetic, so that stage-3 state can be turned into whole tensors and back
(sharding_stage3.py) and the rule is tested on any build.

Paddle 3.3, paddle/distributed/fleet/meta_parallel/sharding/group_sharded_stage3.py:
- `_param2align`: the parameter's bytes (numel * itemsize, 2 for fp16/bf16, 4 for fp32) are
  padded up to a multiple of the device alignment (`alignment`: 256 bytes on GPU/XPU, 4096 on
  CPU); `align` = the padding in elements.
- `_flatten_layer_params`: offset = align + numel, rounded up to a multiple of the world size =
  the buffer size; each rank gets buffer_size / world elements, rank r the range
  [r * per, (r + 1) * per).
- `_param_storage`: the buffer is zeros with the flattened parameter in its first numel elements,
  so the padding (at the end, on the last rank(s)) is zero.
- Only parameters with more than `segment_size` elements (2**20 by default) are sliced; smaller
  ones stay whole on every rank.
"""
import numpy as np

DEVICE_ALIGNMENT = {"gpu": 256, "xpu": 256, "cpu": 4096}  # bytes, Paddle's `alignment`
SEGMENT_SIZE = 2 ** 20  # group_sharded_parallel's default: larger parameters are sliced


def align_pad(numel, itemsize, alignment_bytes):
    """Padding elements after a parameter of `numel` elements of `itemsize` bytes."""
    remaining = (numel * itemsize) % alignment_bytes
    return 0 if remaining == 0 else (alignment_bytes - remaining) // itemsize


def per_rank(numel, world, align):
    """Elements in each rank's slice (the padded buffer divided by the world size)."""
    offset = numel + align
    return -(-offset // world)  # ceil: the buffer is offset rounded up to a multiple of world


def slice_bounds(numel, world, rank, align):
    """[start, end) of rank `rank`'s slice in the padded flat buffer."""
    per = per_rank(numel, world, align)
    return rank * per, (rank + 1) * per


def valid_length(numel, world, rank, align):
    """How many of the rank's slice elements are the parameter's (the rest is zero padding)."""
    start, end = slice_bounds(numel, world, rank, align)
    return max(0, min(end, numel) - start)


def shard_flat(full, world, rank, align):
    """Rank `rank`'s slice of the full tensor `full`: flattened, zero-padded as Paddle pads."""
    flat = np.asarray(full).reshape(-1)
    numel = flat.size
    start, end = slice_bounds(numel, world, rank, align)
    out = np.zeros(end - start, dtype=flat.dtype)
    n = valid_length(numel, world, rank, align)
    out[:n] = flat[start:start + n]
    return out


def unshard(slices, numel, shape):
    """The full tensor of shape `shape` from every rank's slice (in rank order): concatenated,
    the padding dropped."""
    flat = np.concatenate([np.asarray(s).reshape(-1) for s in slices])
    if flat.size < numel:
        raise ValueError(f"{len(slices)} slices hold {flat.size} elements, fewer than {numel}")
    return flat[:numel].reshape(shape)


def param_of(key, names):
    """The parameter an optimizer-state key `<param>_<acc>` belongs to (the longest name in
    `names` that prefixes it, since `linear_1` also prefixes `linear_10_moment1_0`), or None."""
    best = None
    for name in names:
        if key.startswith(name + "_") and (best is None or len(name) > len(best)):
            best = name
    return best
