"""Config files: YAML (+ `_base_` layering) -> `-o` overrides -> validated AttrDict.

Every leaf remembers where it came from (the file that set it last, or the `-o` override), so
an error can point the user at the line of config they have to change.

    attrdict.py   AttrDict
    values.py     parse_value: typing of `-o` values and plain YAML strings, without eval
    yaml_io.py    load_yaml (one file, values typed), dump_config
    layering.py   `_base_` layering and provenance (source_of)
    overrides.py  apply_overrides: `Key.sub.0.x=value`, `List.+=item`, `List.+N=item`
    types.py      the annotation forms schemas use (Annotated ranges: ge, gt, between, Rule)
    schema.py     the fixed sections (Global, FP16, DistributedStrategy, Export, Infer)
    validate.py   validate_config and the component checks Registry.build runs
"""
import os

from ..errors import ConfigError
from .attrdict import AttrDict
from .layering import load_layered, source_of
from .overrides import apply_overrides
from .schema import FIXED_SECTIONS, LOADER_SCHEMA, Field
from .types import Rule, between, ge, gt
from .validate import (check_component, check_data_split, check_dataset, check_op_list,
                       validate_config)
from .values import parse_value
from .yaml_io import dump_config, load_yaml

__all__ = [
    "AttrDict", "Field", "FIXED_SECTIONS", "LOADER_SCHEMA", "Rule", "between", "ge", "gt",
    "get_config", "load_yaml", "parse_value", "apply_overrides", "validate_config",
    "check_component", "check_op_list", "check_dataset", "check_data_split", "dump_config", "source_of",
]


def get_config(path, overrides=None, validate=True, registries=None):
    """Load `path` with its `_base_` files, apply `-o` overrides, validate (fill defaults).

    `registries` is passed to validate_config (tests use small private registries).
    """
    display = os.path.normpath(str(path))
    if not os.path.exists(path):
        raise ConfigError(f"config file not found: {display}")
    data, sources = load_layered(str(path), display, [])
    cfg = AttrDict(data)
    cfg._sources = sources
    apply_overrides(cfg, overrides)
    if validate:
        cfg = validate_config(cfg, registries)
    return cfg
