"""Registries: name -> component, and build-from-dict with clear errors.

A registered component is a class or function whose keyword arguments are the config keys
it accepts. Annotate them (int, float, bool, str, list, dict, Optional[...]) so the config
validator can type-check values before anything is built.
"""
import difflib
import inspect

from .errors import ConfigError


def closest(name, candidates, n=3):
    """The names in `candidates` that look most like `name` (for "did you mean")."""
    return difflib.get_close_matches(str(name), list(candidates), n=n, cutoff=0.5)


def _qualname(obj):
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"


class Registry:
    def __init__(self, kind):
        self.kind = kind  # "model", "loss", ...: used in error messages
        self._entries = {}

    def register(self, name=None):
        def decorator(obj):
            key = name or obj.__name__
            if key in self._entries:
                first = self._entries[key]
                raise KeyError(
                    f"{self.kind} '{key}' is registered twice: "
                    f"{_qualname(first)} and {_qualname(obj)}"
                )
            self._entries[key] = obj
            return obj

        return decorator

    def names(self):
        return sorted(self._entries)

    def __contains__(self, name):
        return name in self._entries

    def get(self, name):
        if name not in self._entries:
            close = closest(name, self._entries)
            if close:
                hint = "did you mean " + " or ".join(f"'{c}'" for c in close) + "?"
            else:
                hint = "registered: " + (", ".join(self.names()) or "none")
            raise ConfigError(f"unknown {self.kind} '{name}'; {hint}")
        return self._entries[name]

    def parameters(self, name):
        """{arg: inspect.Parameter} the component accepts, or None if it takes **kwargs."""
        params = inspect.signature(self.get(name)).parameters
        if any(p.kind is p.VAR_KEYWORD for p in params.values()):
            return None
        return {k: p for k, p in params.items() if k != "self" and p.kind is not p.VAR_POSITIONAL}

    def check_kwargs(self, name, kwargs):
        accepted = self.parameters(name)
        if accepted is None:
            return
        for key in kwargs:
            if key not in accepted:
                close = closest(key, accepted)
                hint = f"did you mean '{close[0]}'? " if close else ""
                raise ConfigError(
                    f"{self.kind} '{name}' got unexpected argument '{key}'; {hint}"
                    f"it accepts: {', '.join(accepted) or 'no arguments'}"
                )

    def build(self, cfg, **extra):
        """Build from {'name': ..., **kwargs}; `extra` are runtime arguments not in the config."""
        if not isinstance(cfg, dict) or "name" not in cfg:
            raise ConfigError(f"a {self.kind} config needs a 'name' key, got {cfg!r}")
        kwargs = {k: v for k, v in cfg.items() if k != "name"}
        self.check_kwargs(cfg["name"], kwargs)
        return self.get(cfg["name"])(**kwargs, **extra)


    def build_list(self, list_cfg, section):
        """Build PLSC's list form `[{Name: {kwargs} or null}, ...]` (losses, metrics,
        transforms) -> [(Name, component)]; `section` names the config key in errors."""
        if list_cfg is None:
            return []
        if not isinstance(list_cfg, (list, tuple)):
            raise ConfigError(f"{section}: expected a list of {{Name: {{args}}}} items, "
                              f"got {list_cfg!r}")
        built = []
        for i, item in enumerate(list_cfg):
            if not isinstance(item, dict) or len(item) != 1:
                raise ConfigError(f"{section}.{i}: expected one {{Name: {{args}}}} item, "
                                  f"got {item!r}")
            (name, kwargs), = item.items()
            if kwargs is not None and not isinstance(kwargs, dict):
                raise ConfigError(f"{section}.{i}.{name}: expected a dict of arguments or null, "
                                  f"got {kwargs!r}")
            built.append((name, self.build({"name": name, **(kwargs or {})})))
        return built


MODELS = Registry("model")
LOSSES = Registry("loss")
OPTIMIZERS = Registry("optimizer")
LR_SCHEDULERS = Registry("lr scheduler")
DATASETS = Registry("dataset")
TRANSFORMS = Registry("transform")
BATCH_TRANSFORMS = Registry("batch transform")
SAMPLERS = Registry("sampler")
METRICS = Registry("metric")


def import_components():
    """Import every module that registers components (they need paddle, so import lazily)."""
    from . import data, loss, metric, models, optim  # noqa: F401
