"""Value types: checking a value against a type annotation, and naming types in errors.

A component's schema is its signature: each config key is a parameter with a type annotation
and a default. Ranges and other value rules ride along as `Annotated` metadata,

    warmup_steps: Annotated[int, ge(0)] = 0
    betas: Tuple[Annotated[float, between(0, 1, hi_open=True)], ...] = (0.9, 0.999)
    decay_type: Literal["cosine", "linear"] = "cosine"

so the type, the range and the default of a key are written once, where the component is, and
`coerce` (used by the validator, the only checker) enforces them all.
"""
import collections.abc
import difflib
import inspect
import math
import types
import typing
from typing import Any, Callable, NamedTuple, Union

NO = object()  # "does not fit the type"


class Rule(NamedTuple):
    """A value rule for `Annotated[T, Rule(...)]`: `test(value) -> bool` on the typed value;
    `text` completes "expected <type> ..." in the error (e.g. ">= 0", "in [0, 1)")."""

    text: str
    test: Callable[[Any], bool]


def _finite(v):
    return not (isinstance(v, float) and math.isnan(v))


def ge(lo):
    return Rule(f">= {lo:g}", lambda v: _finite(v) and v >= lo)


def gt(lo):
    return Rule(f"> {lo:g}", lambda v: _finite(v) and v > lo)


def between(lo, hi, lo_open=False, hi_open=False):
    """lo <= v <= hi, with either end optionally open."""
    text = f"in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
    return Rule(text, lambda v: _finite(v) and (v > lo if lo_open else v >= lo)
                and (v < hi if hi_open else v <= hi))


def closest(name, candidates, n=3):
    """The names in `candidates` that look most like `name` (for "did you mean")."""
    return difflib.get_close_matches(str(name), list(candidates), n=n, cutoff=0.5)


def _is_union(ann, origin):
    return origin is Union or (hasattr(types, "UnionType") and isinstance(ann, types.UnionType))


def coerce(value, ann):
    """`value` converted to annotation `ann` (int -> float, tuple -> list), or NO."""
    if typing.get_origin(ann) is typing.Annotated:
        base, *rules = typing.get_args(ann)
        value = coerce(value, base)
        if value is NO or value is None:
            return value
        ok = all(r.test(value) for r in rules if isinstance(r, Rule))
        return value if ok else NO
    if ann is inspect.Parameter.empty or ann is Any or ann is object:
        return value
    origin, args = typing.get_origin(ann), typing.get_args(ann)
    if _is_union(ann, origin):
        if value is None:
            return None if type(None) in args else NO
        for arg in args:
            if arg is not type(None):
                result = coerce(value, arg)
                if result is not NO:
                    return result
        return NO
    if origin is typing.Literal:
        return value if any(value == a and type(value) is type(a) for a in args) else NO
    if ann is None or ann is type(None):
        return value if value is None else NO
    if value is None:
        return NO
    if ann is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        return NO
    if ann is int:
        return value if isinstance(value, int) and not isinstance(value, bool) else NO
    if ann is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)  # `-o Global.output_dir=123` or `name: 2021` mean the text
    if ann is bool or ann is str:
        return value if isinstance(value, ann) else NO
    seq = ann in (list, tuple) or origin in (list, tuple, collections.abc.Sequence,
                                             collections.abc.MutableSequence)
    if seq or ann in (collections.abc.Sequence, typing.Sequence, typing.List, typing.Tuple):
        return _coerce_items(value, origin, args)
    if ann is dict or origin in (dict, collections.abc.Mapping) or ann in (typing.Dict,
                                                                          collections.abc.Mapping):
        if not isinstance(value, dict):
            return NO
        if len(args) == 2:
            out = {k: coerce(v, args[1]) for k, v in value.items()}
            return NO if any(v is NO for v in out.values()) else out
        return value
    if isinstance(ann, type):
        return value if isinstance(value, ann) else NO
    return value  # an annotation form we do not understand: do not block the user


def _coerce_items(value, origin, args):
    """A list/tuple value against List[T], Tuple[T, ...] or Tuple[A, B, ...]."""
    if not isinstance(value, (list, tuple)):
        return NO
    items = list(value)
    if not args:
        return items
    if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
        if len(items) != len(args):
            return NO
        types_ = args
    else:
        types_ = [args[0]] * len(items)
    out = [coerce(v, t) for v, t in zip(items, types_)]
    return NO if any(v is NO for v in out) else out


def type_name(ann):
    if typing.get_origin(ann) is typing.Annotated:
        base, *rules = typing.get_args(ann)
        return " ".join([type_name(base)] + [r.text for r in rules if isinstance(r, Rule)])
    if ann is inspect.Parameter.empty or ann is Any or ann is object:
        return "anything"
    origin, args = typing.get_origin(ann), typing.get_args(ann)
    if _is_union(ann, origin):
        names = [type_name(a) for a in args if a is not type(None)]
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
            return f"list of {len(args)} ({', '.join(type_name(a) for a in args)})"
        return f"list of {type_name(args[0])}"
    if ann is tuple:
        return "list"
    if origin in (dict, collections.abc.Mapping):
        return "dict"
    return getattr(ann, "__name__", str(ann))


def param_annotation(param, hints):
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


