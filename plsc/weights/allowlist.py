"""The allow-list of the weights-only unpickler (unpickle.py runs the opcodes): the few
globals a weights pickle may name, each mapped to a checking function of ours, and the
checks on what gets built (arrays hold exactly their declared bytes; no markers or
placeholders survive into the result).
"""
import math
import re

import numpy as np


_DTYPE_CODE = re.compile(r"[biufc]\d{1,2}\Z")
_ORDERS = {"<": "<", ">": ">", "|": "|", "=": "="}


class _Marker:
    """A global that is only ever compared against (numpy.ndarray) or called by REDUCE."""

    def __init__(self, name, call=None):
        self.name, self.call = name, call


class _Pending:
    """An array or dtype between REDUCE and BUILD. `slots`: memo entries to update at BUILD."""

    def __init__(self, kind, code=None):
        self.kind, self.code, self.slots = kind, code, []


class _Refused(Exception):
    """A structural rule was broken; turned into one DataError line with the file's label."""


def _reconstruct(args):
    if len(args) != 3 or args[0] is not _NDARRAY:
        raise _Refused("_reconstruct called with something other than numpy.ndarray")
    return _Pending("array")


def _dtype(args):
    if not args or not isinstance(args[0], str) or not _DTYPE_CODE.match(args[0]):
        raise _Refused(f"numpy dtype {args[0] if args else None!r} is not a numeric dtype")
    return _Pending("dtype", args[0])


def _scalar(args):
    if len(args) != 2 or not isinstance(args[0], np.dtype):
        raise _Refused("numpy scalar without a numeric dtype")
    data = _as_bytes(args[1])
    if len(data) != args[0].itemsize:
        raise _Refused(f"numpy scalar of {args[0]} holds {len(data)} bytes")
    return np.frombuffer(data, dtype=args[0])[0]


def _tensor_tuple(args):
    # paddle.save pickles a Tensor as tuple(((name, ndarray),)); paddle.load(return_numpy=True)
    # gives the array, and so do we.
    if (len(args) == 1 and isinstance(args[0], tuple) and len(args[0]) == 2
            and isinstance(args[0][0], str) and isinstance(args[0][1], np.ndarray)):
        return args[0][1]
    raise _Refused("builtins.tuple called with something other than a (name, array) pair")


def _codecs_encode(args):
    if len(args) == 2 and isinstance(args[0], str) and args[1] in ("latin1", "latin-1"):
        return args[0].encode("latin1")
    raise _Refused("_codecs.encode called with something other than (str, 'latin1')")


def _empty_bytes(args):
    if args:  # protocol 2 writes b"" as bytes(); anything else could be huge (bytes(10**12))
        raise _Refused("builtins.bytes called with arguments")
    return b""


def _ordered_dict(args):
    if args:
        raise _Refused("collections.OrderedDict called with arguments")
    return {}


_NDARRAY = _Marker("numpy.ndarray")
_DTYPE = _Marker("numpy.dtype", _dtype)
_ALLOWED = {("numpy", "ndarray"): _NDARRAY, ("numpy", "dtype"): _DTYPE,
            ("builtins", "tuple"): _Marker("builtins.tuple", _tensor_tuple),
            ("__builtin__", "tuple"): _Marker("builtins.tuple", _tensor_tuple),
            ("builtins", "bytes"): _Marker("builtins.bytes", _empty_bytes),
            ("__builtin__", "bytes"): _Marker("builtins.bytes", _empty_bytes),
            ("_codecs", "encode"): _Marker("_codecs.encode", _codecs_encode),
            ("collections", "OrderedDict"): _Marker("collections.OrderedDict", _ordered_dict)}
for _core in ("numpy.core.multiarray", "numpy._core.multiarray"):
    _ALLOWED[(_core, "_reconstruct")] = _Marker("numpy _reconstruct", _reconstruct)
    _ALLOWED[(_core, "scalar")] = _Marker("numpy scalar", _scalar)


def _as_bytes(data):
    if isinstance(data, str):  # Python 2 str read with encoding='latin1'
        return data.encode("latin1")
    if not isinstance(data, (bytes, bytearray)):
        raise _Refused(f"array data is {type(data).__name__}, expected bytes")
    return data


def _build_dtype(pending, state):
    if not (isinstance(state, tuple) and len(state) in (8, 9) and state[0] in (3, 4)
            and state[1] in _ORDERS and state[2:5] == (None, None, None)):
        raise _Refused(f"numpy dtype {pending.code} has an unsupported state")
    dtype = np.dtype(pending.code)
    return dtype.newbyteorder(state[1]) if state[1] in "<>" else dtype


def _build_array(state):
    if isinstance(state, tuple) and len(state) == 5:
        state = state[1:]  # (version, shape, dtype, is_fortran, data)
    if not (isinstance(state, tuple) and len(state) == 4):
        raise _Refused("numpy array with an unsupported state")
    shape, dtype, fortran, data = state
    if not (isinstance(shape, tuple) and len(shape) <= 32
            and all(type(n) is int and n >= 0 for n in shape)):
        raise _Refused(f"numpy array with shape {shape!r}")
    if not isinstance(dtype, np.dtype):
        raise _Refused("numpy array without a numeric dtype")
    data = _as_bytes(data)
    count = math.prod(shape)
    if count * dtype.itemsize != len(data):
        raise _Refused(f"array {shape} of {dtype} declares {count * dtype.itemsize} bytes but "
                       f"holds {len(data)}")
    # A view of the bytes already read: nothing is allocated, and the array is read-only.
    arr = np.frombuffer(data, dtype=dtype, count=count) if count else np.empty(0, dtype)
    arr = arr.reshape(shape, order="F" if fortran else "C")
    if not arr.dtype.isnative:
        arr = arr.astype(arr.dtype.newbyteorder("="))
    return arr


_LEAVES = (str, bytes, int, float, bool, type(None), np.ndarray, np.generic, np.dtype)


def _check_plain(obj):
    """Refuse markers and unfinished placeholders anywhere in the result (a crafted stream can
    tuck them into containers). Iterative, each object once: shared or cyclic structures built
    from memo references cost no more than their size."""
    seen, todo = set(), [obj]
    while todo:
        x = todo.pop()
        if isinstance(x, _LEAVES) or id(x) in seen:
            continue
        seen.add(id(x))
        if type(x) is dict:
            todo.extend(x.keys())
            todo.extend(x.values())
        elif type(x) in (list, tuple):
            todo.extend(x)
        else:
            raise _Refused(f"the file uses {getattr(x, 'name', type(x).__name__)} as a value")


def _paddle_layout(obj):
    """paddle.load's top-level post-processing: join split big tensors, drop the name table."""
    obj.pop("StructuredToParameterName@@", None)
    info = obj.pop("UnpackBigParamInfor@@", None)
    if info is None:
        return obj
    if type(info) is not dict:
        raise _Refused("UnpackBigParamInfor@@ is not a dict")
    for key, entry in info.items():
        try:
            parts = [obj.pop(name) for name in entry["slices"]]
            shape = tuple(entry["OriginShape"])
        except (KeyError, TypeError):
            raise _Refused(f"big tensor '{key}' lists slices the file does not hold") from None
        if not all(isinstance(p, np.ndarray) and p.ndim == 1 for p in parts) or \
                sum(p.size for p in parts) != math.prod(shape):
            raise _Refused(f"big tensor '{key}': slices do not add up to shape {shape}")
        obj[key] = np.concatenate(parts).reshape(shape)
    return obj
