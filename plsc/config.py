"""Config files: YAML (+ `_base_` layering) -> `-o` overrides -> validated AttrDict.

Every leaf remembers where it came from (the file that set it last, or the `-o` override), so
an error can point the user at the line of config they have to change. Values are typed
explicitly (never `eval`): PLSC's published configs write `3e-3`, `(0.9, 0.999)` and
`1.0/255.0`, which YAML 1.1 leaves as strings.

Public API:
    get_config(path, overrides=None, validate=True) -> AttrDict
    load_yaml(path) -> object                 one file, values typed, no `_base_` handling
    parse_value(text) -> object               typing of `-o` values and plain YAML strings
    apply_overrides(cfg, overrides) -> cfg    `Key.sub.0.x=value` strings, in order
    validate_config(cfg, registries=None) -> AttrDict   fills defaults of the fixed sections
    dump_config(cfg) -> str                   YAML, key order kept, re-loads to the same config
    source_of(cfg, key) -> str or None        "configs/x.yaml" or "-o Key=value"
    AttrDict, Field, FIXED_SECTIONS, LOADER_SCHEMA, GRAD_CLIP_NAMES
"""
import collections.abc
import copy
import inspect
import os
import re
import types
import typing
from typing import Any, List, NamedTuple, Optional, Union

import yaml

from .errors import ConfigError
from .registry import closest

__all__ = [
    "AttrDict", "Field", "REQUIRED", "FIXED_SECTIONS", "LOADER_SCHEMA", "GRAD_CLIP_NAMES",
    "get_config", "load_yaml", "parse_value", "apply_overrides", "validate_config",
    "dump_config", "source_of",
]


# ----------------------------------------------------------------------------- AttrDict

class AttrDict(dict):
    """A dict whose keys are also attributes (`cfg.Global.epochs`).

    Dicts stored in it (also inside lists) become AttrDicts, so attribute access works at any
    depth. The root of a loaded config carries `_sources` ({key path tuple: origin}).
    """

    def __init__(self, *args, **kwargs):
        super().__init__()
        for key, value in dict(*args, **kwargs).items():
            self[key] = value

    def __getattr__(self, name):
        if name.startswith("__"):  # copy/pickle probe dunders: never config keys
            raise AttributeError(name)
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name, value):
        if name.startswith("_"):  # private bookkeeping (e.g. _sources), not a config key
            object.__setattr__(self, name, value)
        else:
            self[name] = value

    def __delattr__(self, name):
        try:
            del self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setitem__(self, key, value):
        super().__setitem__(key, _wrap(value))

    def update(self, *args, **kwargs):
        for key, value in dict(*args, **kwargs).items():
            self[key] = value

    def setdefault(self, key, default=None):
        if key not in self:
            self[key] = default
        return self[key]

    def copy(self):
        return AttrDict(self)


def _wrap(value):
    if isinstance(value, AttrDict):
        return value
    if isinstance(value, dict):
        return AttrDict(value)
    if isinstance(value, list):
        return [_wrap(v) for v in value]
    return value


def _plain(value):
    """AttrDicts -> dicts and tuples -> lists, recursively (for merging and dumping)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


# ----------------------------------------------------------------------------- values

_TRUE = {"True", "true", "TRUE"}
_FALSE = {"False", "false", "FALSE"}
_NULL = {"null", "Null", "NULL", "None", "~"}
_INT = re.compile(r"[-+]?\d+\Z")
_FLOAT = re.compile(r"[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?\Z")
_FRACTION = re.compile(r"([-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?)\s*/\s*"
                       r"((?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?)\Z")
_CLOSING = {"[": "]", "(": ")", "{": "}"}


# Limits on config input (issue 11): real configs are a few KB and ~8 levels deep; anything far
# beyond is a damaged or hostile file, refused with one line instead of a hang or a crash.
MAX_CONFIG_BYTES = 1 << 20  # one YAML file
MAX_NESTING = 100  # YAML collections or bracketed values inside one another
MAX_VALUES = 100_000  # YAML nodes of one file, aliases expanded ("billion laughs")
MAX_BASE_FILES = 64  # files read through `_base_` for one config (diamonds counted each time)


def parse_value(text, _depth=0):
    """Type a value written as text, without eval.

    ints, floats (`3e-3`, `1E-8`, `.5`), booleans, null/None/~, `[..]` lists and `(..)` tuples
    (-> lists, elements typed recursively), `{k: v}` mappings, fractions `1.0/255.0` -> float;
    a quoted string loses its quotes; anything else stays the string it is (`id` -> "id").
    Non-strings are returned unchanged.
    """
    if not isinstance(text, str):
        return text
    s = text.strip()
    if len(s) >= 2 and s[0] == s[-1] and s[0] in "'\"":
        return s[1:-1]
    if s in _TRUE:
        return True
    if s in _FALSE:
        return False
    if s in _NULL:
        return None
    if _INT.match(s):
        try:
            return int(s)
        except ValueError:  # more digits than Python converts (4300): keep the text
            return s
    if _FLOAT.match(s):
        return float(s)
    m = _FRACTION.match(s)
    if m and float(m.group(2)) != 0.0:
        return float(m.group(1)) / float(m.group(2))
    if len(s) >= 2 and s[0] in _CLOSING and s[-1] == _CLOSING[s[0]] and _depth < MAX_NESTING:
        parts = _split_top_level(s[1:-1])
        if parts is not None:
            if s[0] == "[":
                return [parse_value(p, _depth + 1) for p in parts]
            if s[0] == "(":
                # Python semantics: "(x)" is x, "(x,)" and "(x, y)" are sequences.
                if len(parts) == 1 and not s[1:-1].rstrip().endswith(","):
                    return parse_value(parts[0], _depth + 1)
                return [parse_value(p, _depth + 1) for p in parts]
            mapping = _parse_mapping(parts, _depth + 1)
            if mapping is not None:
                return mapping
    return s


def _split_top_level(inner):
    """Split on commas outside brackets and quotes; None if unbalanced or an item is empty."""
    parts, depth, quote, start = [], [], None, 0
    for i, ch in enumerate(inner):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch in _CLOSING:
            depth.append(_CLOSING[ch])
        elif ch in ")]}":
            if not depth or depth.pop() != ch:
                return None
        elif ch == "," and not depth:
            parts.append(inner[start:i])
            start = i + 1
    if depth or quote:
        return None
    parts.append(inner[start:])
    parts = [p.strip() for p in parts]
    if parts[-1] == "":  # trailing comma, or empty brackets
        parts.pop()
    if any(p == "" for p in parts):
        return None
    return parts


def _parse_mapping(parts, _depth=0):
    out = {}
    for part in parts:
        key, sep, value = part.partition(":")
        key = key.strip()
        if not sep or not key:
            return None
        if len(key) >= 2 and key[0] == key[-1] and key[0] in "'\"":
            key = key[1:-1]
        out[key] = parse_value(value, _depth)
    return out


# ----------------------------------------------------------------------------- YAML

class _Loader(yaml.SafeLoader):
    """SafeLoader that types plain strings with parse_value and rejects duplicate keys.

    It also refuses nesting deeper than MAX_NESTING (PyYAML composes and constructs
    recursively) and documents whose aliases expand to more than MAX_VALUES nodes."""

    _depth = 0

    def compose_node(self, parent, index):
        if self._depth >= MAX_NESTING:
            raise yaml.composer.ComposerError(
                None, None, f"nested deeper than {MAX_NESTING} levels", self.peek_event().start_mark)
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def get_single_node(self):
        node = super().get_single_node()
        if node is not None and _expanded_size(node) > MAX_VALUES:
            raise yaml.composer.ComposerError(
                None, None, f"more than {MAX_VALUES} values once aliases are expanded",
                node.start_mark)
        return node


def _expanded_size(root):
    """Nodes of the document with every alias expanded (shared nodes counted at each use).

    Iterative, memoised per node; a node met again while its own size is being computed
    (a recursive alias) counts 1 here - the constructor rejects it with its own message."""
    sizes, busy, stack = {}, set(), [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        if done:
            busy.discard(key)
            children = _children(node)
            sizes[key] = 1 + sum(sizes.get(id(c), 1) for c in children)
            continue
        if key in sizes or key in busy:
            continue
        busy.add(key)
        stack.append((node, True))
        stack.extend((c, False) for c in _children(node) if id(c) not in sizes)
    return sizes[id(root)]


def _children(node):
    if isinstance(node, yaml.SequenceNode):
        return node.value
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def _construct_str(loader, node):
    value = loader.construct_scalar(node)
    # Only plain (unquoted) scalars are typed: a quoted "3e-3" is meant as a string.
    return parse_value(value) if node.style is None else value


def _construct_map(loader, node):
    loader.flatten_mapping(node)  # resolves `<<: *anchor` merges
    out = {}
    for key_node, value_node in node.value:
        if isinstance(key_node, yaml.ScalarNode) and key_node.tag == "tag:yaml.org,2002:str":
            key = loader.construct_scalar(key_node)  # keys stay the names they are
        else:
            key = loader.construct_object(key_node, deep=True)
        if not isinstance(key, collections.abc.Hashable):
            raise yaml.constructor.ConstructorError(
                None, None, f"unhashable key {key!r}", key_node.start_mark)
        if key in out:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key '{key}'", key_node.start_mark)
        out[key] = loader.construct_object(value_node, deep=True)
    return out


_Loader.add_constructor("tag:yaml.org,2002:str", _construct_str)
_Loader.add_constructor("tag:yaml.org,2002:map", _construct_map)


def _checked(construct, kind):
    """A scalar constructor whose ValueError (`!!int 12x`, an int of 5000 digits, month 13)
    becomes a YAML error with the line, like every other parse problem."""
    def wrapper(loader, node):
        try:
            return construct(loader, node)
        except (ValueError, TypeError, OverflowError) as e:
            text = str(node.value)
            text = text if len(text) <= 40 else text[:37] + "..."
            reason = str(e).split(";")[0]  # drop "use sys.set_int_max_str_digits() ..."
            raise yaml.constructor.ConstructorError(
                None, None, f"cannot read {text!r} as {kind} ({reason})", node.start_mark) from None
    return wrapper


for _tag, _kind in (("int", "an int"), ("float", "a float"), ("timestamp", "a timestamp")):
    _tag = "tag:yaml.org,2002:" + _tag
    _Loader.add_constructor(_tag, _checked(_Loader.yaml_constructors[_tag], _kind))


def load_yaml(path):
    """Parse one YAML file (no `_base_` handling); errors -> ConfigError 'file:line: problem'."""
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)  # bounded: /dev/zero or a huge file never hangs
        if len(raw) > MAX_CONFIG_BYTES:
            raise ConfigError(f"config file {path} is larger than {MAX_CONFIG_BYTES >> 20} MiB; "
                              f"expected a YAML config")
        text = raw.decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {path} is a directory, expected a YAML file") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        problem = e.problem or "invalid YAML"
        if e.context:
            context = e.context
            if e.context_mark is not None and mark is not None and e.context_mark.line != mark.line:
                context += f" that starts at line {e.context_mark.line + 1}"
            problem = f"{problem} ({context})"
        where = f"{path}:{mark.line + 1}" if mark is not None else path
        raise ConfigError(f"{where}: {_one_line(problem)}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: {_one_line(str(e))}") from None
    except RecursionError:  # a safety net: MAX_NESTING normally stops this first
        raise ConfigError(f"{path}: nested too deeply to parse") from None
    except (ValueError, TypeError, OverflowError) as e:  # an explicit tag: `!!int 1x`, `!!float`
        raise ConfigError(f"{path}: cannot construct a value: {_one_line(e)[:200]}") from None


def _one_line(text):
    return " ".join(str(text).split())


class _Dumper(yaml.SafeDumper):
    """Dump in file order; scalar lists inline (`[1, 5]`); quote strings that would re-type."""

    def ignore_aliases(self, data):  # a shared list is written twice, never as &anchor/*alias
        return True


def _represent_dict(dumper, data):
    return dumper.represent_mapping("tag:yaml.org,2002:map", data.items())


def _represent_list(dumper, data):
    flow = all(not isinstance(v, (dict, list, tuple)) for v in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", list(data), flow_style=flow)


def _represent_str(dumper, data):
    retyped = parse_value(data)
    if type(retyped) is not str or retyped != data:  # e.g. "3e-3", "(a, b)", " x"
        return dumper.represent_scalar("tag:yaml.org,2002:str", data, style="'")
    return dumper.represent_str(data)


_Dumper.add_representer(dict, _represent_dict)
_Dumper.add_representer(AttrDict, _represent_dict)
_Dumper.add_representer(list, _represent_list)
_Dumper.add_representer(tuple, _represent_list)
_Dumper.add_representer(str, _represent_str)


def dump_config(cfg):
    """YAML text of `cfg` (key order kept, tuples as lists); load_yaml of it gives cfg back."""
    return yaml.dump(cfg, Dumper=_Dumper, sort_keys=False, default_flow_style=False,
                     allow_unicode=True, width=100)


# ----------------------------------------------------------------------------- provenance
# Sources map key-path tuples (str keys, int list indices) to an origin string. The origin of
# a leaf is the entry of its longest recorded prefix: a whole file is recorded at (), a key a
# later file sets at its own path.

def _key(path):
    return ".".join(str(p) for p in path)


def _lookup(sources, path):
    path = tuple(path)
    for n in range(len(path), -1, -1):
        if path[:n] in sources:
            return sources[path[:n]]
    return None


def _forget(sources, path):
    n = len(path)
    for p in [p for p in sources if p[:n] == path]:
        del sources[p]


def source_of(cfg, key):
    """Where the value at `key` ("Global.epochs" or a path tuple) came from, or None."""
    sources = getattr(cfg, "_sources", None) or {}
    if isinstance(key, str):
        key = tuple(int(p) if p.isdigit() else p for p in key.split(".")) if key else ()
    return _lookup(sources, key)


def _from(sources, path):
    """' (from <origin>)' for an error about the value at `path`.

    A value set below `path` counts first (the latest one): `-o Globl.epochs=1` created the
    unknown section 'Globl', although the file it was added to is the recorded prefix.
    """
    path = tuple(path)
    n = len(path)
    below = [o for p, o in sources.items() if len(p) > n and p[:n] == path]
    origin = below[-1] if below else _lookup(sources, path)
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
    _forget(base_sources, path)
    origin = _lookup(over_sources, path)
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


def _load_layered(path, display, chain, loads=None):
    """(data, sources) of `path` with its `_base_` files merged in (recursively)."""
    loads = [0] if loads is None else loads  # files read so far for this config (a bound)
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
                          f"got {_describe(data)}")
    bases = data.pop("_base_", None)
    if bases is None:
        bases = []
    elif isinstance(bases, str):
        bases = [bases]
    elif not (isinstance(bases, list) and all(isinstance(b, str) for b in bases)):
        raise ConfigError(f"{display}: _base_ must be a path or a list of paths, "
                          f"got {_describe(bases)}")
    merged, sources = {}, {}
    for base in bases:
        base_display = os.path.normpath(os.path.join(os.path.dirname(display), base))
        base_path = os.path.join(os.path.dirname(path), base)
        if not os.path.isfile(base_path):
            problem = ("is a directory" if os.path.isdir(base_path) else "is not a regular file"
                       if os.path.exists(base_path) else "not found")
            raise ConfigError(f"{display}: _base_ file '{base}' {problem} "
                              f"(looked for {base_display})")
        base_data, base_sources = _load_layered(base_path, base_display, chain, loads)
        merged = _merge(merged, sources, base_data, base_sources)
    merged = _merge(merged, sources, data, {(): display})
    return merged, sources


# ----------------------------------------------------------------------------- overrides

def apply_overrides(cfg, overrides):
    """Apply `Key.sub.0.name=value` strings to `cfg` (an AttrDict from get_config) in order.

    Missing dict keys along the path are created (validation then judges them); list items are
    addressed by index. The provenance of each set value becomes "-o <override>".
    """
    sources = getattr(cfg, "_sources", None)
    if sources is None:
        sources = {}
        cfg._sources = sources
    for text in overrides or []:
        _apply_override(cfg, str(text).strip(), sources)
    return cfg


def _apply_override(cfg, text, sources):
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep:
        raise ConfigError(f"override '{text}' has no '='; expected -o Key.sub=value")
    parts = key.split(".")
    if not key or any(p == "" for p in parts):
        raise ConfigError(f"override '{text}': bad key path '{key}'; expected -o Key.sub=value")
    node, path = cfg, ()
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, list):
            if not part.isdigit():
                raise ConfigError(f"override '{text}': '{_key(path)}' is a list; address its "
                                  f"items by index 0..{len(node) - 1}, got '{part}'")
            index = int(part)
            if index >= len(node):
                raise ConfigError(f"override '{text}': index {index} out of range for "
                                  f"'{_key(path)}' (list of length {len(node)})")
            part = index
        elif isinstance(node, dict):
            if not last and node.get(part) is None:
                node[part] = {}  # `ToCHWImage:` (null) or a new section: grow a dict
        else:
            raise ConfigError(f"override '{text}': '{_key(path)}' is {_describe(node)}, "
                              f"not a section with keys")
        path += (part,)
        if last:
            node[part] = _wrap(parse_value(raw))
        else:
            node = node[part]
    _forget(sources, path)
    sources[path] = f"-o {text}"


# ----------------------------------------------------------------------------- schema

REQUIRED = type("Required", (), {"__repr__": lambda self: "REQUIRED"})()  # a Field default


class Field(NamedTuple):
    """One key of a fixed section: annotation-style type, default, and optional constraints."""

    type: Any
    default: Any
    choices: Optional[tuple] = None
    minimum: Optional[int] = None
    keys: Optional[dict] = None  # sub-schema when the value is a mapping with fixed keys


GRAD_SCALER_SCHEMA = {
    "init_loss_scaling": Field(float, 65536.0),
    "incr_ratio": Field(float, 2.0),
    "decr_ratio": Field(float, 0.5),
    "incr_every_n_steps": Field(int, 1000, minimum=1),
    "decr_every_n_nan_or_inf": Field(int, 2, minimum=1),
    "use_dynamic_loss_scaling": Field(bool, True),
}

SHARDING_SCHEMA = {
    "sharding_stage": Field(int, 1, minimum=1),
    "sharding_degree": Field(int, 1, minimum=1),
}

FIXED_SECTIONS = {
    "Global": {
        "checkpoint": Field(Optional[str], None),
        "pretrained_model": Field(Optional[str], None),
        "finetune": Field(bool, False),
        "pos_embed_interp": Field(str, "bilinear", choices=("bilinear", "bicubic")),
        "output_dir": Field(str, "./output/"),
        "device": Field(str, "gpu", choices=("gpu", "cpu", "xpu")),
        "save_interval": Field(int, 1, minimum=1),
        "max_num_latest_checkpoint": Field(int, 0, minimum=0),
        "eval_during_train": Field(bool, True),
        "eval_interval": Field(int, 1, minimum=1),
        "eval_unit": Field(str, "epoch", choices=("epoch", "step")),
        "accum_steps": Field(int, 1, minimum=1),
        "epochs": Field(int, 1, minimum=0),
        "max_train_step": Field(Optional[int], None, minimum=1),
        "print_batch_step": Field(int, 10, minimum=1),
        "use_visualdl": Field(bool, False),
        "seed": Field(Optional[int], None),
        "max_nan_steps": Field(int, 3, minimum=1),
        "flags": Field(Optional[dict], None),
    },
    "FP16": {
        "level": Field(str, "O0", choices=("O0", "O1", "O2")),
        "dtype": Field(str, "float16", choices=("float16", "bfloat16")),
        "GradScaler": Field(dict, {}, keys=GRAD_SCALER_SCHEMA),
        "fp16_custom_white_list": Field(List[str], []),
        "fp16_custom_black_list": Field(List[str], []),
    },
    "DistributedStrategy": {
        "data_parallel": Field(bool, True),
        "recompute": Field(bool, False),
        "sharding": Field(Optional[dict], None, keys=SHARDING_SCHEMA),
    },
    "Export": {
        "export_type": Field(str, "paddle"),
        "input_shape": Field(List[Optional[int]], [None, 3, 224, 224]),
    },
    "Infer": {
        "label_file": Field(Optional[str], None),
        "topk": Field(int, 5, minimum=1),
    },
}

LOADER_SCHEMA = {
    "num_workers": Field(int, 0, minimum=0),
    "use_shared_memory": Field(bool, True),
}

GRAD_CLIP_NAMES = ("ClipGradByGlobalNorm",)
GRAD_CLIP_SCHEMA = {"clip_norm": Field(float, REQUIRED, minimum=0)}

TOP_LEVEL = ("Global", "FP16", "DistributedStrategy", "Model", "Loss", "Metric",
             "LRScheduler", "Optimizer", "DataLoader", "Export", "Infer")
SPLITS = ("Train", "Eval")


# ----------------------------------------------------------------------------- types

_NO = object()  # "does not fit the type"


def _coerce(value, ann):
    """`value` converted to annotation `ann` (int -> float, tuple -> list), or _NO."""
    if ann is inspect.Parameter.empty or ann is Any or ann is object:
        return value
    origin, args = typing.get_origin(ann), typing.get_args(ann)
    if origin is Union or (hasattr(types, "UnionType") and isinstance(ann, types.UnionType)):
        if value is None:
            return None if type(None) in args else _NO
        for arg in args:
            if arg is not type(None):
                result = _coerce(value, arg)
                if result is not _NO:
                    return result
        return _NO
    if origin is typing.Literal:
        return value if any(value == a and type(value) is type(a) for a in args) else _NO
    if ann is None or ann is type(None):
        return value if value is None else _NO
    if value is None:
        return _NO
    if ann is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        return _NO
    if ann is int:
        return value if isinstance(value, int) and not isinstance(value, bool) else _NO
    if ann is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)  # `-o Global.output_dir=123` or `name: 2021` mean the text
    if ann is bool or ann is str:
        return value if isinstance(value, ann) else _NO
    seq = ann in (list, tuple) or origin in (list, tuple, collections.abc.Sequence,
                                             collections.abc.MutableSequence)
    if seq or ann in (collections.abc.Sequence, typing.Sequence, typing.List, typing.Tuple):
        if not isinstance(value, (list, tuple)):
            return _NO
        items = list(value)
        if not args:
            return items
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            if len(items) != len(args):
                return _NO
            types_ = args
        else:
            types_ = [args[0]] * len(items)
        out = [_coerce(v, t) for v, t in zip(items, types_)]
        return _NO if any(v is _NO for v in out) else out
    if ann is dict or origin in (dict, collections.abc.Mapping) or ann in (typing.Dict,
                                                                          collections.abc.Mapping):
        if not isinstance(value, dict):
            return _NO
        if len(args) == 2:
            out = {k: _coerce(v, args[1]) for k, v in value.items()}
            return _NO if any(v is _NO for v in out.values()) else out
        return value
    if isinstance(ann, type):
        return value if isinstance(value, ann) else _NO
    return value  # an annotation form we do not understand: do not block the user


def _type_name(ann):
    if ann is inspect.Parameter.empty or ann is Any or ann is object:
        return "anything"
    origin, args = typing.get_origin(ann), typing.get_args(ann)
    if origin is Union or (hasattr(types, "UnionType") and isinstance(ann, types.UnionType)):
        names = [_type_name(a) for a in args if a is not type(None)]
        if type(None) in args:
            names.append("null")
        return " or ".join(names)
    if origin is typing.Literal:
        return "one of " + ", ".join(str(a) for a in args)
    if ann is None or ann is type(None):
        return "null"
    if origin in (list, tuple, collections.abc.Sequence, collections.abc.MutableSequence):
        if not args:
            return "list"
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            return f"list of {len(args)} ({', '.join(_type_name(a) for a in args)})"
        return f"list of {_type_name(args[0])}"
    if ann is tuple:
        return "list"
    if origin in (dict, collections.abc.Mapping):
        return "dict"
    return getattr(ann, "__name__", str(ann))


def _describe(value):
    """'str 'ten'', 'null', 'list [1, 2]' - the kind and value, shortened to one line."""
    if value is None:
        return "null"
    kind = ("dict" if isinstance(value, dict) else "list" if isinstance(value, (list, tuple))
            else type(value).__name__)
    text = repr(_plain(value))
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{kind} {text}"


def _param_annotation(param, hints):
    """The type a component argument accepts: its annotation, else its default's type."""
    ann = param.annotation
    if isinstance(ann, str):  # `from __future__ import annotations`
        ann = hints.get(param.name, inspect.Parameter.empty)
    if ann is inspect.Parameter.empty:
        default = param.default
        if default is inspect.Parameter.empty or default is None:
            return inspect.Parameter.empty
        return list if isinstance(default, tuple) else type(default)
    return ann


# ----------------------------------------------------------------------------- validation

def validate_config(cfg, registries=None):
    """Check every key of `cfg`; return a new AttrDict with fixed-section defaults filled in.

    `registries` maps registry names ("MODELS", "LOSSES", ...) to Registry objects; missing
    ones are the global registries of plsc.registry (populated on first use).
    """
    sources = dict(getattr(cfg, "_sources", None) or {})
    result = _Validator(sources, registries).root(cfg)
    result._sources = sources
    return result


class _Validator:
    def __init__(self, sources, registries):
        self.sources = sources
        self.registries = dict(registries or {})
        self.hints = {}

    # -- helpers
    def registry(self, name):
        if name not in self.registries:
            from . import registry as reg

            if not getattr(self, "_imported", False):
                reg.import_components()
                self._imported = True
            self.registries[name] = getattr(reg, name)
        return self.registries[name]

    def fail(self, path, message):
        raise ConfigError(f"{_key(path)}: {message}{_from(self.sources, path)}")

    def unknown(self, path, accepted):
        where = _from(self.sources, path)
        prefix = _key(path[:-1])
        full = (lambda k: f"{prefix}.{k}") if prefix else (lambda k: str(k))
        close = closest(path[-1], [str(a) for a in accepted], n=1)
        if close:
            hint = f"did you mean '{full(close[0])}'?"
        else:
            hint = "accepted keys: " + (", ".join(str(a) for a in accepted) or "none")
        raise ConfigError(f"unknown key '{_key(path)}'{where}; {hint}")

    def wrong_type(self, path, expected, value):
        self.fail(path, f"expected {expected}, got {_describe(value)}")

    def mapping(self, value, path, what="a mapping"):
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.wrong_type(path, what, value)
        return value

    # -- the whole config
    def root(self, cfg):
        if not isinstance(cfg, dict):
            raise ConfigError(f"a config must be a mapping of sections, got {_describe(cfg)}")
        out = AttrDict()
        for key, value in cfg.items():
            path = (key,)
            if key not in TOP_LEVEL:
                self.unknown(path, TOP_LEVEL)
            if key in FIXED_SECTIONS:
                out[key] = self.fixed(value, FIXED_SECTIONS[key], path)
            elif value is None:
                out[key] = None  # an empty optional component section
            else:
                out[key] = getattr(self, "section_" + key)(value, path)
        if out.get("Model") is None:
            raise ConfigError("missing required section 'Model' (the model to build, e.g. "
                              "Model: {name: ViT_base_patch16_224, class_num: 1000})")
        for key, schema in FIXED_SECTIONS.items():
            if key not in out:
                out[key] = self.fixed(None, schema, (key,))
        return out

    # -- fixed schemas
    def fixed(self, value, schema, path):
        value = self.mapping(value, path)
        out = AttrDict()
        for key, item in value.items():
            if key not in schema:
                self.unknown(path + (key,), list(schema))
            out[key] = self.field(item, schema[key], path + (key,))
        for key, field in schema.items():
            if key in out:
                continue
            if field.default is REQUIRED:
                self.fail(path, f"missing key '{key}' ({_type_name(field.type)})")
            out[key] = self.field(copy.deepcopy(field.default), field, path + (key,))
        return out

    def field(self, value, field, path):
        if field.keys is not None:
            if value is None and _coerce(None, field.type) is None:
                return None
            return self.fixed(value, field.keys, path)
        result = _coerce(value, field.type)
        if result is _NO:
            self.wrong_type(path, _type_name(field.type), value)
        if field.choices is not None and result not in field.choices:
            self.fail(path, f"expected one of {', '.join(field.choices)}, got {_describe(value)}")
        if field.minimum is not None and result is not None and result < field.minimum:
            self.fail(path, f"expected {_type_name(field.type)} >= {field.minimum}, "
                            f"got {_describe(value)}")
        return result

    # -- components
    def name_of(self, value, registry, path):
        """Check the `name` key of a `{name: X, ...}` section; return the name."""
        if "name" not in value:
            self.fail(path, f"missing key 'name' (the {registry.kind} to build; registered: "
                            f"{', '.join(registry.names()) or 'none'})")
        name = value["name"]
        self.check_name(name, registry, path + ("name",))
        return name

    def check_name(self, name, registry, path):
        if not isinstance(name, str):
            self.wrong_type(path, f"a {registry.kind} name", name)
        if name not in registry:
            close = closest(name, registry.names(), n=3)
            if close:
                hint = "did you mean " + " or ".join(f"'{c}'" for c in close) + "?"
            else:
                hint = "registered: " + (", ".join(registry.names()) or "none")
            raise ConfigError(f"{_key(path)}: unknown {registry.kind} '{name}'"
                              f"{_from(self.sources, path)}; {hint}")

    def arguments(self, name, kwargs, registry, path, special=None, skip=()):
        """Type-check `kwargs` of component `name`; `special` {key: checker} are ours to check."""
        special = special or {}
        params = registry.parameters(name)
        hints = self.type_hints(registry, name) if params else {}
        out = AttrDict()
        for key, value in kwargs.items():
            if key in skip:
                out[key] = value
            elif key in special:
                out[key] = special[key](value, path + (key,))
            elif params is None:  # the component takes **kwargs: it checks them itself
                out[key] = value
            elif key not in params:
                self.unknown(path + (key,), list(skip) + list(params) + list(special))
            else:
                ann = _param_annotation(params[key], hints)
                result = _coerce(value, ann)
                if result is _NO:
                    self.wrong_type(path + (key,), _type_name(ann), value)
                out[key] = result
        return out

    def type_hints(self, registry, name):
        key = (registry.kind, name)
        if key not in self.hints:
            obj = registry.get(name)
            try:
                self.hints[key] = typing.get_type_hints(obj.__init__ if isinstance(obj, type)
                                                        else obj)
            except Exception:  # unresolvable string annotations: fall back to defaults
                self.hints[key] = {}
        return self.hints[key]

    def component(self, value, registry, path, special=None):
        value = self.mapping(value, path, f"a mapping with a 'name' key")
        name = self.name_of(value, registry, path)
        return self.arguments(name, value, registry, path, special, skip=("name",))

    def op_list(self, value, registry, path):
        """`[{Name: {args} or null}, ...]` (Loss, Metric, transform_ops)."""
        if value is None:
            return None
        if not isinstance(value, list):
            self.wrong_type(path, f"a list of {{{registry.kind} name: {{arguments}}}}", value)
        out = []
        for i, item in enumerate(value):
            item_path = path + (i,)
            if not (isinstance(item, dict) and len(item) == 1):
                self.wrong_type(item_path, f"a one-key mapping {{{registry.kind} name: "
                                           f"{{arguments}}}}", item)
            (name, kwargs), = item.items()
            self.check_name(name, registry, item_path)
            kwargs = self.mapping(kwargs, item_path + (name,)) if kwargs is not None else None
            if kwargs is not None:
                kwargs = self.arguments(name, kwargs, registry, item_path + (name,))
            out.append(AttrDict({name: kwargs}))
        return out

    def splits(self, value, path, check):
        value = self.mapping(value, path)
        out = AttrDict()
        for key, item in value.items():
            if key not in SPLITS:
                self.unknown(path + (key,), SPLITS)
            out[key] = check(item, path + (key,))
        return out

    def section_Model(self, value, path):
        return self.component(value, self.registry("MODELS"), path)

    def section_LRScheduler(self, value, path):
        return self.component(value, self.registry("LR_SCHEDULERS"), path)

    def section_Optimizer(self, value, path):
        return self.component(value, self.registry("OPTIMIZERS"), path,
                              special={"grad_clip": self.grad_clip})

    def grad_clip(self, value, path):
        if value is None:
            return None
        value = self.mapping(value, path, "a mapping {name: ClipGradByGlobalNorm, clip_norm: "
                                          "float} or null")
        if "name" not in value:
            self.fail(path, f"missing key 'name' (one of: {', '.join(GRAD_CLIP_NAMES)})")
        if value["name"] not in GRAD_CLIP_NAMES:
            self.fail(path + ("name",), f"expected one of {', '.join(GRAD_CLIP_NAMES)}, "
                                        f"got {_describe(value['name'])}")
        rest = {k: v for k, v in value.items() if k != "name"}
        for key in rest:
            if key not in GRAD_CLIP_SCHEMA:
                self.unknown(path + (key,), ["name"] + list(GRAD_CLIP_SCHEMA))
        out = AttrDict(name=value["name"])
        out.update(self.fixed(rest, GRAD_CLIP_SCHEMA, path))
        return out

    def section_Loss(self, value, path):
        return self.splits(value, path, lambda v, p: self.op_list(v, self.registry("LOSSES"), p))

    def section_Metric(self, value, path):
        return self.splits(value, path, lambda v, p: self.op_list(v, self.registry("METRICS"), p))

    def section_DataLoader(self, value, path):
        return self.splits(value, path, self.data_split)

    def data_split(self, value, path):
        if value is None:
            return None
        value = self.mapping(value, path)
        checks = {"dataset": self.dataset, "sampler": self.sampler,
                  "loader": lambda v, p: self.fixed(v, LOADER_SCHEMA, p)}
        out = AttrDict()
        for key, item in value.items():
            if key not in checks:
                self.unknown(path + (key,), list(checks))
            out[key] = checks[key](item, path + (key,))
        for key in ("dataset", "sampler"):
            if key not in out:
                self.fail(path, f"missing key '{key}'")
        if "loader" not in out:
            out["loader"] = self.fixed(None, LOADER_SCHEMA, path + ("loader",))
        return out

    def dataset(self, value, path):
        special = {
            "transform_ops": lambda v, p: self.op_list(v, self.registry("TRANSFORMS"), p),
            "batch_transform_ops": lambda v, p: self.op_list(v, self.registry("BATCH_TRANSFORMS"),
                                                             p),
        }
        return self.component(value, self.registry("DATASETS"), path, special=special)

    def sampler(self, value, path):
        return self.component(value, self.registry("SAMPLERS"), path)


# ----------------------------------------------------------------------------- entry point

def get_config(path, overrides=None, validate=True, registries=None):
    """Load `path` with its `_base_` files, apply `-o` overrides, validate (fill defaults).

    `registries` is passed to validate_config (tests use small private registries).
    """
    display = os.path.normpath(str(path))
    if not os.path.exists(path):
        raise ConfigError(f"config file not found: {display}")
    data, sources = _load_layered(str(path), display, [])
    cfg = AttrDict(data)
    cfg._sources = sources
    apply_overrides(cfg, overrides)
    if validate:
        cfg = validate_config(cfg, registries)
    return cfg
