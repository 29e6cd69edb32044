"""Every random number generator a training step uses, as plain JSON values and back.

A checkpoint's .pdstates is JSON (issue 11: readable with nothing but a JSON parser, no pickle),
so the three generators are stored as lists of integers and floats:
- python `random`: (version, 625 ints, gauss_next)
- numpy legacy global: ('MT19937', 624 uint32 keys, pos, has_gauss, cached_gaussian)
- paddle: one generator state per device; the pybind object exposes its content only through
  the pickle protocol (__getstate__/__setstate__), whose tuple is plain ints and a byte string.
Round trips are exact, so a resumed run draws the same numbers as an uninterrupted one.
"""
import random

import numpy as np
import paddle


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed % 2**32)
    paddle.seed(seed)


def _paddle_to_json(state):
    device, seed, offset, mt = state.__getstate__()
    return [int(device), int(seed), int(offset), bytes(mt).decode("ascii")]


def _paddle_from_json(values):
    device, seed, offset, mt = values
    state = paddle.base.core.GeneratorState.__new__(paddle.base.core.GeneratorState)
    state.__setstate__((device, seed, offset, list(mt.encode("ascii"))))
    return state


def get_state():
    """This process's RNG states as JSON-serializable values."""
    version, keys, gauss = random.getstate()
    kind, mt, pos, has_gauss, cached = np.random.get_state()
    return {"python": [version, list(keys), gauss],
            "numpy": [kind, [int(k) for k in mt], int(pos), int(has_gauss), float(cached)],
            "paddle": [_paddle_to_json(s) for s in paddle.get_rng_state()]}


def set_state(state):
    version, keys, gauss = state["python"]
    random.setstate((version, tuple(keys), gauss))
    kind, mt, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(mt, dtype=np.uint32), pos, has_gauss, cached))
    paddle.set_rng_state([_paddle_from_json(s) for s in state["paddle"]])
