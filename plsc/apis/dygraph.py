"""The dygraph model of a config: device choice, weights, and its Classifier."""
import logging
import os

from ..errors import ConfigError
from .classifier import Classifier
from .labels import resolve_class_names
from .preprocess import Preprocess, eval_transform_ops

logger = logging.getLogger("plsc")


def resolve_device(device):
    """'cpu' or 'gpu:N' (None: a GPU when this Paddle has CUDA and sees one, else CPU)."""
    import paddle

    gpu_ok = paddle.is_compiled_with_cuda() and paddle.device.cuda.device_count() > 0
    if device is None:
        return "gpu:0" if gpu_ok else "cpu"
    device = str(device).lower()
    if device == "gpu":
        device = "gpu:0"
    if device.startswith("gpu") and not gpu_ok:
        raise ConfigError(f"device '{device}': this Paddle build sees no GPU (use device='cpu')")
    if device != "cpu" and not device.startswith("gpu"):
        raise ConfigError(f"device must be 'cpu', 'gpu' or 'gpu:N', got {device!r}")
    return device


def as_config(config):
    """A validated config from a path or a dict."""
    from ..config import AttrDict, get_config, validate_config

    if isinstance(config, dict):
        return validate_config(config if isinstance(config, AttrDict) else AttrDict(config))
    return get_config(os.fspath(config))


def build_dygraph(cfg, checkpoint=None):
    """The config's model in eval mode with `checkpoint` (or Global.pretrained_model) loaded
    strictly; random weights (with a warning) when there is none."""
    from ..convert.pretrained import load_pretrained
    from ..models import build_model

    model = build_model(dict(cfg.Model))
    weights = checkpoint or cfg.Global.get("pretrained_model")
    if weights:
        load_pretrained(model, os.fspath(weights), finetune=False, log=logger.info)
    else:
        logger.warning("no checkpoint given: %s has random weights", cfg.Model.name)
    model.eval()
    return model


def input_shape(cfg, model):
    """[C, H, W] the model takes."""
    size = int(getattr(model, "img_size", cfg.Model.get("img_size", 224)))
    return (int(cfg.Model.get("in_chans", 3)), size, size)


def init_dygraph(config, checkpoint, device):
    """Classifier of kind 'dygraph' from a config (path or dict) and a checkpoint prefix."""
    import paddle

    cfg = as_config(config)
    paddle.set_device(device)
    model = build_dygraph(cfg, checkpoint)
    if cfg.Global.get("to_static"):
        # The config's fast path: logits from a static graph (a program per batch shape);
        # extract_feat / attention maps call the dygraph methods, which stay as they are.
        model = paddle.jit.to_static(model, full_graph=True)
    shape = input_shape(cfg, model)
    preprocess = Preprocess(eval_transform_ops(cfg, shape[1]), shape)
    names, _ = resolve_class_names(cfg, int(getattr(model, "class_num", 0) or 0))
    weights = checkpoint or cfg.Global.get("pretrained_model")
    return Classifier("dygraph", preprocess, names, int(cfg.Infer.topk), cfg.Model.name,
                      model=model, cfg=cfg, source=os.fspath(weights) if weights else None)
