"""YAML in and out: the project's loader (typed scalars, duplicate keys refused) and dumper."""
import collections.abc

import yaml

from ..errors import ConfigError
from .attrdict import AttrDict
from .values import MAX_NESTING, one_line, parse_value

# Bounds on one config file: real ones are a few KB; beyond these it is damaged or hostile and
# gets one line instead of a hang, a crash or gigabytes of memory.
MAX_CONFIG_BYTES = 1 << 20
MAX_VALUES = 100_000  # YAML nodes of one file once aliases are expanded ("billion laughs")


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

    Iterative and memoised per node; a node met again while its own size is being computed
    (a recursive alias) counts 1 here: the constructor rejects it with its own message."""
    sizes, busy, stack = {}, set(), [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        if done:
            busy.discard(key)
            sizes[key] = 1 + sum(sizes.get(id(c), 1) for c in _children(node))
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
        raise ConfigError(f"{where}: {one_line(problem)}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: {one_line(str(e))}") from None
    except RecursionError:  # a safety net: MAX_NESTING normally stops this first
        raise ConfigError(f"{path}: nested too deeply to parse") from None
    except (ValueError, TypeError, OverflowError) as e:  # an explicit tag: `!!int 1x`, `!!float`
        raise ConfigError(f"{path}: cannot construct a value: {one_line(e)[:200]}") from None


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

