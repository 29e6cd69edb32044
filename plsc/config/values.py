"""Typing of values written as text (`-o` values, plain YAML scalars), without eval.

PLSC's published configs write `3e-3`, `(0.9, 0.999)` and `1.0/255.0`, which YAML 1.1 leaves
as strings; here they become the float, the list and the float they mean.
"""
import re

from .attrdict import plain

_TRUE = {"True", "true", "TRUE"}
_FALSE = {"False", "false", "FALSE"}
_NULL = {"null", "Null", "NULL", "None", "~"}
_INT = re.compile(r"[-+]?\d+\Z")
_FLOAT = re.compile(r"[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?\Z")
_FRACTION = re.compile(r"([-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?)\s*/\s*"
                       r"((?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?)\Z")
_CLOSING = {"[": "]", "(": ")", "{": "}"}
# Real configs are a few KB and ~8 levels deep; far beyond that is a damaged or hostile file,
# refused with one line instead of a RecursionError (bracketed values and YAML alike).
MAX_NESTING = 100


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



def describe(value):
    """'str 'ten'', 'null', 'list [1, 2]' - the kind and value, shortened to one line."""
    if value is None:
        return "null"
    kind = ("dict" if isinstance(value, dict) else "list" if isinstance(value, (list, tuple))
            else type(value).__name__)
    text = repr(plain(value))
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{kind} {text}"


def one_line(text):
    return " ".join(str(text).split())

