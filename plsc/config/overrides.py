"""`-o` overrides: `Key.sub.0.name=value` sets a value; `List.+=value` appends an item to a
list and `List.+N=value` inserts one before item N (`transform_ops.+1={ResizeImage: {...}}`)."""
from ..errors import ConfigError
from .attrdict import wrap
from .layering import forget, key_str
from .values import describe, parse_value


def apply_overrides(cfg, overrides):
    """Apply `-o` override strings to `cfg` (an AttrDict from get_config) in order.

    Missing dict keys along the path are created (validation then judges them); list items are
    addressed by index, `+`/`+N` as the last part adds one. The provenance of each set value
    becomes "-o <override>".
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
        if part.startswith("+"):
            _insert(node, path, part, last, text, raw, sources)
            return
        if isinstance(node, list):
            part = _index(node, path, part, text)
        elif isinstance(node, dict):
            if not last and node.get(part) is None:
                # `ToCHWImage:` (null) or a new section grows a dict; `X.+=...` a new list
                node[part] = [] if parts[i + 1].startswith("+") else {}
        else:
            raise ConfigError(f"override '{text}': '{key_str(path)}' is {describe(node)}, "
                              f"not a section with keys")
        path += (part,)
        if last:
            node[part] = wrap(parse_value(raw))
        else:
            node = node[part]
    forget(sources, path)
    sources[path] = f"-o {text}"


def _index(node, path, part, text):
    if not part.isdigit():
        raise ConfigError(f"override '{text}': '{key_str(path)}' is a list; address its items "
                          f"by index 0..{len(node) - 1} (or add one with '+' / '+N'), "
                          f"got '{part}'")
    index = int(part)
    if index >= len(node):
        raise ConfigError(f"override '{text}': index {index} out of range for "
                          f"'{key_str(path)}' (list of length {len(node)})")
    return index


def _insert(node, path, part, last, text, raw, sources):
    """`+` appends to the list `node`, `+N` inserts before its item N."""
    where = key_str(path)
    if not isinstance(node, list):
        raise ConfigError(f"override '{text}': '{part}' adds a list item, but '{where}' is "
                          f"{describe(node)}, not a list")
    if not last:
        raise ConfigError(f"override '{text}': '{part}' must be the last part of the key "
                          f"(give the whole item as the value)")
    digits = part[1:]
    if digits and not digits.isdigit() or digits and int(digits) > len(node):
        raise ConfigError(f"override '{text}': '{part}' is not a position in '{where}'; "
                          f"expected '+' (append) or '+N' with N in 0..{len(node)}")
    index = int(digits) if digits else len(node)
    node.insert(index, wrap(parse_value(raw)))
    _shift(sources, path, index)
    sources[path + (index,)] = f"-o {text}"


def _shift(sources, path, index):
    """Renumber recorded origins of the items at `index` and after (they moved up by one)."""
    n = len(path)
    moved = {}
    for p, origin in sources.items():
        if len(p) > n and p[:n] == path and isinstance(p[n], int) and p[n] >= index:
            p = p[:n] + (p[n] + 1,) + p[n + 1:]
        moved[p] = origin
    sources.clear()
    sources.update(moved)
