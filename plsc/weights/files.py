"""Weights files: find them, tell their format by content, read them as {name: array}, write them.

Formats, recognised by their first bytes (never by the file name):
  pickle       .pdparams (ours, PLSC's fp32 or fp16-stored O2 ones, paddle.save's) - read
               weights-only by plsc.weights.unpickle
  zip          an official ViT / big_vision .npz, converted by plsc.convert.npz
  safetensors  a timm ViT, converted by plsc.convert.timm
"""
import os
import pickle
import struct

import numpy as np

from ..errors import DataError
from .unpickle import load_pickle

PICKLE_EXTS = (".pdparams", ".pdopt", ".pdstates", ".pdema")
_NUMERIC = "biufc"


def label(path, source=None):
    return f"{source}: {path}" if source else str(path)


def resolve(path, source=None):
    """The file a weights argument names: the path itself, or PLSC's prefix + '.pdparams'."""
    path = os.fspath(path)
    if os.path.isfile(path):
        return path
    if os.path.isfile(path + ".pdparams"):
        return path + ".pdparams"
    if os.path.isdir(path):
        raise DataError(f"{label(path, source)}: is a directory, expected a weights file or "
                        f"a checkpoint prefix")
    also = "" if path.endswith(".pdparams") else f" (nor {path}.pdparams)"
    where = f"{source}: " if source else ""
    raise DataError(f"{where}checkpoint not found: {path}{also}")


def sniff(path):
    """'pickle', 'npz', 'safetensors' or None, from the first bytes of the file."""
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return "pickle"
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return "npz"
    if len(head) == 9 and head[8:9] == b"{" and \
            struct.unpack("<Q", head[:8])[0] < os.path.getsize(path):
        return "safetensors"
    return None


def read_state(path, source=None):
    """{name: np.ndarray} in our layout from any accepted weights file or prefix.

    `source` names where the path came from (e.g. "Global.pretrained_model") in every error.
    """
    path = resolve(path, source)
    kind = sniff(path)
    if kind == "pickle":
        return state_from_pickle(load_pickle(path, source), label(path, source))
    if kind is None:
        raise DataError(f"{label(path, source)}: not a weights file (expected a .pdparams "
                        f"pickle, an .npz archive or a .safetensors file)")
    try:
        if kind == "npz":
            from ..convert.npz import load_npz_as_state
            return load_npz_as_state(path)[0]
        from ..convert.timm import load_timm_as_state
        return load_timm_as_state(path, num_heads=1)[0]  # the fused layout ignores heads
    except DataError as e:  # the converters name the file; add where it came from
        raise DataError(f"{source}: {e}" if source else str(e)) from None


def state_from_pickle(obj, where):
    """Check that an unpickled .pdparams is a model state dict: {str: numeric array}."""
    if type(obj) is not dict:
        raise DataError(f"{where}: expected a dict of arrays (a model state dict), got "
                        f"{type(obj).__name__}")
    bad = [str(k) for k, v in obj.items()
           if not isinstance(k, str) or not isinstance(v, np.ndarray) or v.dtype.kind not in _NUMERIC]
    if bad:
        raise DataError(f"{where}: expected a dict of arrays (a model state dict); not arrays: "
                        f"{', '.join(bad[:8])}{' ...' if len(bad) > 8 else ''}")
    return obj


def save_pickle(obj, path):
    """Write `obj` (dicts, lists, tuples, numbers, strings, numpy arrays, paddle Tensors) as a
    pickle that paddle.load and load_pickle read; Tensors are stored as numpy arrays.

    Atomic: written to a temporary file next to `path`, fsynced, then renamed over it, so a
    crash leaves either the old file or the new one. The pickler's memo is off: with it on,
    pickle keeps every array's serialized copy alive until the end, doubling peak memory
    (+330 MB for ViT-B/16); the plain copy made here has no shared or recursive parts.
    """
    data = _plain(obj, "obj")
    path = os.fspath(path)
    d = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(d, f".{os.path.basename(path)}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            pickler = pickle.Pickler(f, protocol=4)  # paddle.save's default protocol
            pickler.fast = True
            pickler.dump(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fd = os.open(d, os.O_RDONLY)  # the rename lives in the directory: make it durable
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _plain(x, where):
    """A copy of `x` made only of what load_pickle admits; anything else is a bug (TypeError)."""
    if x is None or isinstance(x, (bool, int, float, str, bytes, np.generic)):
        return x
    if isinstance(x, np.ndarray):
        if x.dtype.kind not in _NUMERIC:
            raise TypeError(f"save_pickle: {where} has dtype {x.dtype}, not numeric")
        return x
    if isinstance(x, dict):
        return {k: _plain(v, f"{where}[{k!r}]") for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        items = [_plain(v, f"{where}[{i}]") for i, v in enumerate(x)]
        return items if isinstance(x, list) else tuple(items)
    if type(x).__module__.startswith("paddle") and hasattr(x, "numpy"):  # a Tensor
        return _plain(np.asarray(x.numpy()), where)
    raise TypeError(f"save_pickle: {where} is a {type(x).__name__}, which load_pickle refuses")
