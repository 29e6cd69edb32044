"""Validation, the one place config values are checked.

Fixed sections are checked against plsc/config/schema.py, components against the signature of
the registered component (types, ranges and defaults; see plsc/config/types.py) plus its
optional cross-key `check`. `Registry.build` runs the same checks (check_component /
check_op_list), so a builder always receives validated keyword arguments.
Every error is one line: `<Key.path>: expected <type>, got <kind value> (from <origin>)`,
`unknown key '<Key.path>' (from <origin>); did you mean ...` or `<Key.path>: <problem>`.
"""
import copy
import inspect
import typing
from typing import Annotated, Optional

from ..errors import ConfigError
from .attrdict import AttrDict
from .layering import key_str, origin_suffix
from .schema import FIXED_SECTIONS, LOADER_SCHEMA, SPLITS, TOP_LEVEL
from .types import NO, closest, ge, coerce, param_annotation, type_name
from .values import describe


def validate_config(cfg, registries=None):
    """Check every key of `cfg`; return a new AttrDict with fixed-section defaults filled in.

    `registries` maps registry names ("MODELS", "LOSSES", ...) to Registry objects; missing
    ones are the global registries of plsc.registry (populated on first use).
    """
    sources = dict(getattr(cfg, "_sources", None) or {})
    result = _Validator(sources, registries).root(cfg)
    result._sources = sources
    return result


def check_component(registry, cfg, section=None):
    """`{name: ..., **kwargs}` for `registry`, validated (the check Registry.build runs).

    `section` ("Optimizer", "DataLoader.Train.sampler") names the keys in errors; default:
    the component's name.
    """
    if not section:  # errors name the component, there is no key path
        if not isinstance(cfg, dict) or "name" not in cfg:
            raise ConfigError(f"a {registry.kind} config needs a 'name' key, got {cfg!r}")
        registry.get(cfg["name"])
        # the path starts with the component's name, which is no config key: suggest bare keys
        return _Validator({}, {}, named=True).component(cfg, registry, (str(cfg["name"]),))
    return _Validator({}, {}).component(cfg, registry, tuple(section.split(".")))


def check_op_list(registry, list_cfg, section):
    """PLSC's `[{Name: {kwargs} or null}, ...]` for `registry`, validated."""
    return _Validator({}, {}).op_list(list_cfg, registry, tuple(section.split(".")))


def check_dataset(cfg, section):
    """A dataset section ({name, ..., transform_ops, batch_transform_ops}), validated."""
    return _Validator({}, {}).dataset(cfg, tuple(section.split(".")))


def check_data_split(section_cfg, section):
    """A `DataLoader.Train` / `DataLoader.Eval` section, validated, loader defaults filled."""
    return _Validator({}, {}).data_split(section_cfg, tuple(section.split(".")))


class _Validator:
    def __init__(self, sources, registries, named=False):
        self.sources = sources
        self.registries = dict(registries or {})
        self.named = named

    # -- helpers
    def registry(self, name):
        if name not in self.registries:
            from .. import registry as reg

            reg.import_components()
            self.registries[name] = getattr(reg, name)
        return self.registries[name]

    def fail(self, path, message):
        raise ConfigError(f"{key_str(path)}: {message}{origin_suffix(self.sources, path)}")

    def unknown(self, path, accepted):
        where = origin_suffix(self.sources, path)
        prefix = "" if self.named and len(path) == 2 else key_str(path[:-1])
        full = (lambda k: f"{prefix}.{k}") if prefix else (lambda k: str(k))
        accepted = list(dict.fromkeys(str(a) for a in accepted))
        close = closest(path[-1], accepted, n=1)
        if close:
            hint = f"did you mean '{full(close[0])}'?"
        else:
            hint = "accepted keys: " + (", ".join(accepted) or "none")
        raise ConfigError(f"unknown key '{key_str(path)}'{where}; {hint}")

    def typed(self, value, ann, path):
        result = coerce(value, ann)
        if result is NO:
            self.fail(path, f"expected {type_name(ann)}, got {describe(value)}")
        return result

    def mapping(self, value, path, what="a mapping"):
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.fail(path, f"expected {what}, got {describe(value)}")
        return value

    # -- the whole config
    def root(self, cfg):
        if not isinstance(cfg, dict):
            raise ConfigError(f"a config must be a mapping of sections, got {describe(cfg)}")
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
                out[key] = self.section(key, value, path)
        if out.get("Model") is None:
            raise ConfigError("missing required section 'Model' (the model to build, e.g. "
                              "Model: {name: ViT_base_patch16_224, class_num: 1000})")
        for key, schema in FIXED_SECTIONS.items():
            if key not in out:
                out[key] = self.fixed(None, schema, (key,))
        return out

    def section(self, key, value, path):
        if key in ("Loss", "Metric"):
            registry = self.registry("LOSSES" if key == "Loss" else "METRICS")
            return self.splits(value, path, lambda v, p: self.op_list(v, registry, p))
        if key == "DataLoader":
            return self.splits(value, path, self.data_split)
        registry = self.registry({"Model": "MODELS", "LRScheduler": "LR_SCHEDULERS",
                                  "Optimizer": "OPTIMIZERS"}[key])
        special = {"Optimizer": {"grad_clip": self.grad_clip},
                   "LRScheduler": {"base_batch_size": self.base_batch_size}}.get(key)
        return self.component(value, registry, path, special)

    def base_batch_size(self, value, path):
        """LRScheduler.base_batch_size: learning_rate is given per this many images of global
        batch (DeiT: 5e-4 per 512); build_lr_scheduler scales it to the run's global batch."""
        return self.typed(value, Optional[Annotated[int, ge(1)]], path)

    def fixed(self, value, schema, path):
        value = self.mapping(value, path)
        out = AttrDict()
        for key, item in value.items():
            if key not in schema:
                self.unknown(path + (key,), list(schema))
            out[key] = self.field(item, schema[key], path + (key,))
        for key, field in schema.items():
            if key not in out:
                out[key] = self.field(copy.deepcopy(field.default), field, path + (key,))
        return out

    def field(self, value, field, path):
        if field.keys is not None:
            if value is None and coerce(None, field.type) is None:
                return None
            if not isinstance(value, dict) and coerce(value, field.type) not in (NO, None):
                return coerce(value, field.type)  # the plain form of a union (recompute: true)
            return self.fixed(value, field.keys, path)
        return self.typed(value, field.type, path)

    # -- components
    def check_name(self, name, registry, path):
        if not isinstance(name, str):
            self.fail(path, f"expected a {registry.kind} name, got {describe(name)}")
        if name not in registry:
            close = closest(name, registry.names(), n=3)
            if close:
                hint = "did you mean " + " or ".join(f"'{c}'" for c in close) + "?"
            else:
                hint = "registered: " + (", ".join(registry.names()) or "none")
            raise ConfigError(f"{key_str(path)}: unknown {registry.kind} '{name}'"
                              f"{origin_suffix(self.sources, path)}; {hint}")

    def arguments(self, name, kwargs, registry, path, special=None, skip=()):
        """Check `kwargs` of component `name` against its signature (and `special` checkers)."""
        special = special or {}
        params = registry.parameters(name)
        out = AttrDict()
        for key, value in kwargs.items():
            if key in skip:
                out[key] = value
            elif key in special:
                out[key] = special[key](value, path + (key,))
            elif params is None:  # the component takes **kwargs: its own sub-builds check them
                out[key] = value
            elif key not in params:
                self.unknown(path + (key,), list(skip) + list(params) + list(special))
            else:
                out[key] = self.typed(value, self.annotation(registry, name, params[key]),
                                      path + (key,))
        self.complete(name, out, registry, params or {}, path)
        return out

    def annotation(self, registry, name, param):
        obj = registry.get(name)
        try:  # string annotations (`from __future__ import annotations`) need resolving
            hints = typing.get_type_hints(obj.__init__ if isinstance(obj, type) else obj,
                                          include_extras=True)
        except Exception:  # unresolvable: fall back to the default's type
            hints = {}
        return param_annotation(param, hints)

    def complete(self, name, out, registry, params, path):
        """Required keys present, then the component's cross-key rule (on keys + defaults)."""
        for key, param in params.items():
            if param.default is inspect.Parameter.empty and key not in out:
                ann = self.annotation(registry, name, param)
                self.fail(path, f"missing key '{key}' ({type_name(ann)})")
        rule = registry.check_of(name)
        if rule is not None:
            values = {k: p.default for k, p in params.items()}
            values.update((k, v) for k, v in out.items() if k != "name")
            problem = rule(values)
            if problem:
                self.fail(path, problem)

    def component(self, value, registry, path, special=None):
        value = self.mapping(value, path, "a mapping with a 'name' key")
        if "name" not in value:
            self.fail(path, f"missing key 'name' (the {registry.kind} to build; registered: "
                            f"{', '.join(registry.names()) or 'none'})")
        self.check_name(value["name"], registry, path + ("name",))
        return self.arguments(value["name"], value, registry, path, special, skip=("name",))

    def op_list(self, value, registry, path):
        """`[{Name: {args} or null}, ...]` (Loss, Metric, transform_ops)."""
        if value is None:
            return None
        if not isinstance(value, list):
            self.fail(path, f"expected a list of {{{registry.kind} name: {{arguments}}}}, "
                            f"got {describe(value)}")
        out = []
        for i, item in enumerate(value):
            item_path = path + (i,)
            if not (isinstance(item, dict) and len(item) == 1):
                self.fail(item_path, f"expected a one-key mapping {{{registry.kind} name: "
                                     f"{{arguments}}}}, got {describe(item)}")
            (name, kwargs), = item.items()
            self.check_name(name, registry, item_path)
            kwargs = self.mapping(kwargs, item_path + (name,), "a mapping of arguments or null")
            checked = self.arguments(name, kwargs, registry, item_path + (name,))
            out.append(AttrDict({name: checked if item[name] is not None else None}))
        return out

    def splits(self, value, path, check):
        value = self.mapping(value, path)
        out = AttrDict()
        for key, item in value.items():
            if key not in SPLITS:
                self.unknown(path + (key,), SPLITS)
            out[key] = check(item, path + (key,))
        return out

    def grad_clip(self, value, path):
        if value is None:
            return None
        return self.component(value, self.registry("GRAD_CLIPS"), path)

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
