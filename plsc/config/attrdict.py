"""AttrDict: the dict a config is, with attribute access at any depth."""


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
        super().__setitem__(key, wrap(value))

    def update(self, *args, **kwargs):
        for key, value in dict(*args, **kwargs).items():
            self[key] = value

    def setdefault(self, key, default=None):
        if key not in self:
            self[key] = default
        return self[key]

    def copy(self):
        return AttrDict(self)


def wrap(value):
    if isinstance(value, AttrDict):
        return value
    if isinstance(value, dict):
        return AttrDict(value)
    if isinstance(value, list):
        return [wrap(v) for v in value]
    return value


def plain(value):
    """AttrDicts -> dicts and tuples -> lists, recursively (for merging and dumping)."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value

