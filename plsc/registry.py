"""Registries: name -> component, and build-from-config with the config's own checks.

A registered component is a class or function whose parameters are its schema: each config
key is a parameter with a type annotation (ranges as `Annotated[float, ge(0)]`, choices as
`Literal[...]`, see plsc/config/types.py) and a default. Objects that are not config keys (a
model, the step count, a rank) are declared with `runtime=` at registration: the validator never
offers or accepts them, and the caller passes them to `build(cfg, **runtime)` (as mmengine's
default_args). A rule spanning several keys is `check=fn(values) -> problem or None`, called
with every key (defaults filled in).
"""
import inspect

from .config.types import closest
from .errors import ConfigError

__all__ = ["Registry", "closest", "import_components", "MODELS", "LOSSES", "OPTIMIZERS",
           "LR_SCHEDULERS", "DATASETS", "TRANSFORMS", "BATCH_TRANSFORMS", "SAMPLERS", "METRICS",
           "GRAD_CLIPS"]


def _qualname(obj):
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"


class Registry:
    def __init__(self, kind):
        self.kind = kind  # "model", "loss", ...: used in error messages
        self._entries = {}
        self._runtime = {}
        self._checks = {}

    def register(self, name=None, runtime=(), check=None):
        def decorator(obj):
            key = name or obj.__name__
            if key in self._entries:
                first = self._entries[key]
                raise KeyError(
                    f"{self.kind} '{key}' is registered twice: "
                    f"{_qualname(first)} and {_qualname(obj)}"
                )
            self._entries[key] = obj
            self._runtime[key] = tuple(runtime)
            self._checks[key] = check
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
        """{config key: inspect.Parameter}, or None if the component takes **kwargs."""
        params = inspect.signature(self.get(name)).parameters
        if any(p.kind is p.VAR_KEYWORD for p in params.values()):
            return None
        hidden = set(self._runtime[name]) | {"self"}
        return {k: p for k, p in params.items()
                if k not in hidden and p.kind is not p.VAR_POSITIONAL}

    def check_of(self, name):
        """The cross-key rule of `name`, or None."""
        self.get(name)
        return self._checks[name]

    def build(self, cfg, section=None, **runtime):
        """Build from {'name': ..., **kwargs} after validating it; `runtime` objects are passed
        as they are. `section` ("Optimizer") names the keys in errors."""
        from .config.validate import check_component

        cfg = check_component(self, cfg, section)
        kwargs = {k: v for k, v in cfg.items() if k != "name"}
        return self.get(cfg["name"])(**kwargs, **runtime)

    def build_list(self, list_cfg, section):
        """Build PLSC's list form `[{Name: {kwargs} or null}, ...]` (losses, metrics,
        transforms) -> [(Name, component)]; `section` names the config key in errors."""
        from .config.validate import check_op_list

        built = []
        for item in check_op_list(self, list_cfg, section) or []:
            (name, kwargs), = item.items()
            built.append((name, self.get(name)(**(kwargs or {}))))
        return built


MODELS = Registry("model")
LOSSES = Registry("loss")
OPTIMIZERS = Registry("optimizer")
LR_SCHEDULERS = Registry("lr scheduler")
GRAD_CLIPS = Registry("grad clip")
DATASETS = Registry("dataset")
TRANSFORMS = Registry("transform")
BATCH_TRANSFORMS = Registry("batch transform")
SAMPLERS = Registry("sampler")
METRICS = Registry("metric")


def import_components():
    """Import every module that registers components (they need paddle, so import lazily)."""
    from . import data, loss, metric, models, optim  # noqa: F401
