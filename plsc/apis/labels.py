"""Class names of a model: a label file, the dataset's own names, or the built-in ImageNet-1k list.

Order: `Infer.label_file` (one name per line, or PaddleClas' `<index> <name>` lines; `imagenet1k`
names the built-in list), the dataset's `class_names` (ImageFolder, CIFAR, SyntheticShapes), the
built-in ImageNet-1k list when class_num == 1000.
"""
import logging
import os

from ..errors import ConfigError, DataError

logger = logging.getLogger("plsc")

RESOURCES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "resources")
BUILTIN_LABELS = {"imagenet1k": os.path.join(RESOURCES, "imagenet1k_labels.txt")}


def load_class_names(path, class_num=None):
    """Names from a label file (or a built-in list name such as 'imagenet1k').

    One name per line in class order, or `<index> <name>` lines in any order (PaddleClas'
    class_id_map files). Blank lines are ignored. With `class_num`, the count must match."""
    source = BUILTIN_LABELS.get(path, path)
    try:
        with open(source, encoding="utf-8") as f:
            lines = [line.strip() for line in f if line.strip()]
    except FileNotFoundError:
        raise ConfigError(f"label file not found: {path} (built-in lists: "
                          f"{', '.join(BUILTIN_LABELS)})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read label file {path}: {getattr(e, 'strerror', None) or e}") \
            from None
    heads = [line.split(None, 1) for line in lines]
    indexed = all(len(h) == 2 and h[0].isdigit() for h in heads)
    if indexed and sorted(int(h[0]) for h in heads) == list(range(len(lines))):
        names = [None] * len(lines)
        for index, name in heads:
            names[int(index)] = name.strip()
    else:
        names = lines
    if class_num is not None and len(names) != class_num:
        raise ConfigError(f"label file {path} has {len(names)} class names but the model has "
                          f"class_num {class_num}")
    return names


def _dataset_class_names(cfg):
    """(`class_names` of the config's Eval (else Train) dataset, description), or (None, None)
    when it has none or cannot be built here (e.g. the data is not on this machine)."""
    from ..registry import DATASETS

    loaders = cfg.get("DataLoader") or {}
    for split in ("Eval", "Train"):
        section = loaders.get(split)
        if not section or not section.get("dataset"):
            continue
        ds_cfg = dict(section["dataset"])
        ds_cfg["transform_ops"] = None
        ds_cfg.pop("batch_transform_ops", None)
        try:
            dataset = DATASETS.build(ds_cfg)
        except (DataError, ConfigError, OSError) as e:
            logger.info("class names: DataLoader.%s dataset unavailable (%s)", split, e)
            return None, None
        names = getattr(dataset, "class_names", None)
        return (list(names) if names else None), f"dataset {ds_cfg.get('name')}"
    return None, None


def resolve_class_names(cfg, class_num):
    """(names or None, where they came from) for a validated config; see the module doc."""
    label_file = (cfg.get("Infer") or {}).get("label_file")
    if label_file:
        return load_class_names(label_file, class_num), f"Infer.label_file {label_file}"
    names, source = _dataset_class_names(cfg)
    if names:
        if len(names) == class_num:
            return names, source
        logger.warning("class names: the %s has %d names but the model has class_num %d; "
                       "names not used", source, len(names), class_num)
    if class_num == 1000:
        return load_class_names("imagenet1k", 1000), "built-in imagenet1k"
    return None, "none"
