"""Weights files in one place: read any of them by content, load strictly, write.

    load_pickle(path, source=None) -> object      weights-only unpickling (see unpickle.py)
    loads_pickle(data, label, encoding='latin1')  the same for bytes in memory
    save_pickle(obj, path)                        a pickle paddle.load reads; atomic
    read_state(path, source=None) -> {name: np.ndarray}
                                                  .pdparams / official .npz / timm .safetensors,
                                                  told apart by content; a PLSC prefix gets
                                                  '.pdparams' appended
    assign(model, state, source) -> casts         the strict loader (keys, shapes; casts dtype)
    resolve(path, source=None) -> path            prefix -> file, or 'checkpoint not found'

`source` names where a path came from ("Global.pretrained_model", "Global.checkpoint") in every
error message. Importing this package does not import paddle; `assign` does when called.
"""
from .assign import assign, check_match  # noqa: F401
from .files import read_state, resolve, save_pickle, sniff  # noqa: F401
from .unpickle import load_pickle, loads_pickle  # noqa: F401
