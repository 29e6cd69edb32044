"""Provenance (which file or `-o` set each key) and `_base_` layering of config files.

Sources map key-path tuples (str keys, int list indices) to an origin string. The origin of a
leaf is the entry of its longest recorded prefix: a whole file is recorded at (), a key a later
file sets at its own path.
"""
import os

from ..errors import ConfigError
from .values import describe
from .yaml_io import load_yaml



def key_str(path):
    return ".".join(str(p) for p in path)


def lookup(sources, path):
    path = tuple(path)
    for n in range(len(path), -1, -1):
        if path[:n] in sources:
            return sources[path[:n]]
    return None


def forget(sources, path):
    n = len(path)
    for p in [p for p in sources if p[:n] == path]:
        del sources[p]


def source_of(cfg, key):
    """Where the value at `key` ("Global.epochs" or a path tuple) came from, or None."""
    sources = getattr(cfg, "_sources", None) or {}
    if isinstance(key, str):
        key = tuple(int(p) if p.isdigit() else p for p in key.split(".")) if key else ()
    return lookup(sources, key)


def origin_suffix(sources, path):
    """' (from <origin>)' for an error about the value at `path`.

    A value set below `path` counts first (the latest one): `-o Globl.epochs=1` created the
    unknown section 'Globl', although the file it was added to is the recorded prefix.
    """
    path = tuple(path)
    n = len(path)
    below = [o for p, o in sources.items() if len(p) > n and p[:n] == path]
    origin = below[-1] if below else lookup(sources, path)
    return f" (from {origin})" if origin else ""


# ----------------------------------------------------------------------------- layering

def _is_true(value):
    return value is True


def _merge(base, base_sources, over, over_sources, path=()):
    """Merge `over` onto `base` (dicts deeply; lists/scalars and `_delete_: true` dicts replace).

    `base_sources` is updated in place to describe the result.
    """
    if isinstance(base, dict) and isinstance(over, dict) and not _is_true(over.get("_delete_")):
        out = dict(base)
        for key, value in over.items():
            if key == "_delete_":
                continue
            out[key] = _merge(base.get(key, _MISSING), base_sources, value, over_sources,
                              path + (key,))
        return out
    forget(base_sources, path)
    origin = lookup(over_sources, path)
    if origin is not None:
        base_sources[path] = origin
    n = len(path)
    for p, o in over_sources.items():
        if len(p) > n and p[:n] == path:
            base_sources[p] = o
    return _strip_delete(over)


_MISSING = object()


def _strip_delete(value):
    if isinstance(value, dict):
        return {k: _strip_delete(v) for k, v in value.items() if k != "_delete_"}
    if isinstance(value, list):
        return [_strip_delete(v) for v in value]
    return value


# Files read through `_base_` for one config (a diamond's shared base counts each time): real
# configs read a handful; repeated lists would otherwise grow exponentially.
MAX_BASE_FILES = 64


def load_layered(path, display, chain, loads=None):
    """(data, sources) of `path` with its `_base_` files merged in (recursively)."""
    loads = [0] if loads is None else loads  # files read so far for this config
    loads[0] += 1
    if loads[0] > MAX_BASE_FILES:
        raise ConfigError(f"{display}: more than {MAX_BASE_FILES} _base_ files to read for one "
                          f"config (do _base_ lists repeat files?)")
    real = os.path.realpath(path)
    if real in [r for r, _ in chain]:
        start = [r for r, _ in chain].index(real)
        cycle = [d for _, d in chain[start:]] + [display]
        raise ConfigError("_base_ cycle: " + " -> ".join(cycle))
    chain = chain + [(real, display)]
    data = load_yaml(path)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{display}: expected a mapping of sections at the top level, "
                          f"got {describe(data)}")
    bases = data.pop("_base_", None)
    if bases is None:
        bases = []
    elif isinstance(bases, str):
        bases = [bases]
    elif not (isinstance(bases, list) and all(isinstance(b, str) for b in bases)):
        raise ConfigError(f"{display}: _base_ must be a path or a list of paths, "
                          f"got {describe(bases)}")
    merged, sources = {}, {}
    for base in bases:
        base_display = os.path.normpath(os.path.join(os.path.dirname(display), base))
        base_path = os.path.join(os.path.dirname(path), base)
        if not os.path.isfile(base_path):
            problem = ("is a directory" if os.path.isdir(base_path) else "is not a regular file"
                       if os.path.exists(base_path) else "not found")
            raise ConfigError(f"{display}: _base_ file '{base}' {problem} "
                              f"(looked for {base_display})")
        base_data, base_sources = load_layered(base_path, base_display, chain, loads)
        merged = _merge(merged, sources, base_data, base_sources)
    merged = _merge(merged, sources, data, {(): display})
    return merged, sources

