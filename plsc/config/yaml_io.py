"""YAML in and out: the project's loader (typed scalars, duplicate keys refused) and dumper."""
import collections.abc

import yaml

from ..errors import ConfigError
from .attrdict import AttrDict
from .values import one_line, parse_value



class _Loader(yaml.SafeLoader):
    """SafeLoader that types plain strings with parse_value and rejects duplicate keys."""


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


def load_yaml(path):
    """Parse one YAML file (no `_base_` handling); errors -> ConfigError 'file:line: problem'."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
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

