"""The one strict loader: put a {name: array} state into a model, or say exactly what differs.

`Layer.set_state_dict` is never used: on a shape mismatch it only warns and skips the tensor,
so a wrong checkpoint would silently keep random weights.
"""
import numpy as np

from ..errors import ConfigError, DataError


def name_list(names, limit=20):
    """'a, b, c' - long lists are cut so the error stays one readable line."""
    names = list(names)
    more = f" ... and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def shape_of(a):
    return tuple(int(v) for v in a.shape)


def mismatch(key, ckpt_shape, model_shape):
    return f"{key} checkpoint {ckpt_shape} vs model {model_shape}"


def check_match(state, model_shapes, source):
    """ConfigError listing missing, unexpected and mis-shaped arrays (one line), if any."""
    missing = [k for k in model_shapes if k not in state]
    unexpected = [k for k in state if k not in model_shapes]
    wrong = [mismatch(k, shape_of(state[k]), s) for k, s in model_shapes.items()
             if k in state and shape_of(state[k]) != tuple(s)]
    problems = []
    if missing:
        problems.append(f"checkpoint lacks {len(missing)} model arrays: {name_list(missing)}")
    if unexpected:
        problems.append(f"checkpoint has {len(unexpected)} arrays the model lacks: "
                        f"{name_list(unexpected)}")
    if wrong:
        problems.append(f"shape mismatch: {name_list(wrong, 8)}")
    if problems:
        raise ConfigError(f"{source}: " + "; ".join(problems))


def _as_float(arr, key, source):
    # paddle.save stores a bfloat16 tensor as uint16 (its bit pattern): the top half of a float32.
    if arr.dtype == np.uint16:
        return (arr.astype(np.uint32) << 16).view(np.float32)
    if arr.dtype.kind != "f":
        raise DataError(f"{source}: array '{key}' has dtype {arr.dtype}, expected floating point")
    return arr


def assign(model, state, source):
    """Set every model tensor from `state` (exactly the model's keys and shapes), casting each
    array to its tensor's dtype. Returns {(from_dtype, to_dtype): count} of the casts done."""
    import paddle
    targets = model.state_dict()
    check_match(state, {k: shape_of(t) for k, t in targets.items()}, source)
    casts = {}
    with paddle.no_grad():
        for k, t in targets.items():
            value = paddle.to_tensor(np.ascontiguousarray(_as_float(np.asarray(state[k]), k,
                                                                    source)))
            if value.dtype != t.dtype:
                key = (str(value.dtype).replace("paddle.", ""), str(t.dtype).replace("paddle.", ""))
                casts[key] = casts.get(key, 0) + 1
                value = value.astype(t.dtype)
            t.set_value(value)
    return casts
