"""Using a trained model from Python: load, predict, extract features, explain, export.

    model = init_model("configs/x.yaml", "output/ViT_base_patch16_224/best_model")  # dygraph
    model = init_model("output/ViT_base_patch16_224/export")      # exported: paddle.inference
    inference_model(model, "cat.jpg")     -> {'pred_label', 'pred_score', 'pred_class', 'topk_*'}
    inference_model(model, [img, ...])    -> [dict, ...]   (paths or HWC uint8 RGB arrays)
    extract_feat(model, img)              -> {'patch_tokens' [B, D, h, w], 'cls_feature' [B, D]}
    attention_rollout(attn_list, num_prefix_tokens, discard_ratio=0.0) -> map [B, N - prefix]
    export_model(cfg)                     -> {'dir', 'model', 'params', 'infer_cfg', ...}

Both kinds of model are a `Classifier`: `.preprocess` (path or array -> CHW float32, exactly the
config's eval transforms), `.class_names` (list or None), `.topk`, `.logits(batch)`. The exported
directory carries its own preprocessing and class names in `infer_cfg.yaml`, so predictions of an
exported model and of the dygraph model it came from agree (tests/test_export.py).

Class names come from, in order: `Infer.label_file` (one name per line, or PaddleClas'
`<index> <name>` lines; `imagenet1k` names the built-in list), the dataset's `class_names`
(ImageFolder, CIFAR, SyntheticShapes), the built-in ImageNet-1k list when class_num == 1000.
"""
import logging
import os

import numpy as np

from .errors import ConfigError, DataError

logger = logging.getLogger("plsc")

RESOURCES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "resources")
BUILTIN_LABELS = {"imagenet1k": os.path.join(RESOURCES, "imagenet1k_labels.txt")}

# What tools/export.py writes into {output_dir}/{Model.name}/export/.
EXPORT_PREFIX = "inference"
INFER_CFG = "infer_cfg.yaml"
PARAMS_FILE = EXPORT_PREFIX + ".pdiparams"
MODEL_FILES = (EXPORT_PREFIX + ".json", EXPORT_PREFIX + ".pdmodel")  # Paddle 3.x (PIR), 2.x

__all__ = ["Classifier", "Preprocess", "init_model", "inference_model", "extract_feat",
           "attention_rollout", "attention_map", "export_model", "save_inference_model",
           "postprocess", "create_predictor", "read_infer_cfg", "build_dygraph",
           "load_class_names", "resolve_class_names", "eval_transform_ops", "softmax",
           "bf16_supported"]


# ----------------------------------------------------------------------------- class names

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
    from .registry import DATASETS

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


# ----------------------------------------------------------------------------- preprocessing

def default_eval_ops(img_size):
    """The official ViT eval preprocessing: squash-resize to the model resolution, pixels to
    [-1, 1]. Used when a config has no DataLoader.Eval (e.g. the Model-only YAML written by
    tools/convert.py next to a converted official checkpoint)."""
    return [{"DecodeImage": {"to_rgb": True}},
            {"ResizeImage": {"size": int(img_size)}},
            {"NormalizeImage": {"scale": 1.0 / 255.0, "mean": [0.5, 0.5, 0.5],
                                "std": [0.5, 0.5, 0.5], "order": ""}},
            {"ToCHWImage": None}]


def _plain(value):
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def eval_transform_ops(cfg, img_size):
    """Config form of the eval transforms: DataLoader.Eval's transform_ops, else the official."""
    section = (cfg.get("DataLoader") or {}).get("Eval") or {}
    ops = (section.get("dataset") or {}).get("transform_ops")
    return _plain(ops) if ops else default_eval_ops(img_size)


class Preprocess:
    """image (path, or HWC uint8 RGB array) -> CHW float32 by the config's eval transforms.

    Arrays skip decoding; they are converted like a decoded file would be (to BGR when the
    config's DecodeImage has to_rgb: False, to CHW when channel_first). Gray arrays get three
    channels, RGBA arrays lose alpha. The result must have `input_shape` [C, H, W]."""

    def __init__(self, transform_ops, input_shape):
        from .data.transforms import DecodeImage, create_operators

        self.transform_ops = _plain(transform_ops)
        self.ops = create_operators(self.transform_ops)
        if not self.ops or not isinstance(self.ops[0], DecodeImage):
            self.ops.insert(0, DecodeImage(to_rgb=True))
        self.decode = self.ops[0]
        self.input_shape = tuple(int(v) for v in input_shape)
        self._rng = np.random.default_rng(0)  # eval ops draw nothing; fixed just in case

    def _array(self, image):
        img = np.asarray(image)
        if img.dtype != np.uint8:
            raise DataError(f"image arrays must be uint8 HWC RGB, got dtype {img.dtype}")
        if img.ndim == 2:
            img = np.repeat(img[:, :, None], 3, axis=2)
        if img.ndim != 3 or img.shape[2] not in (1, 3, 4):
            raise DataError(f"image arrays must be HWC with 1, 3 or 4 channels, got shape "
                            f"{list(img.shape)}")
        if img.shape[2] == 1:
            img = np.repeat(img, 3, axis=2)
        img = img[:, :, :3]
        if not self.decode.to_rgb:
            img = img[:, :, ::-1]
        if self.decode.channel_first:
            img = img.transpose(2, 0, 1)
        return np.ascontiguousarray(img)

    def _decoded(self, image):
        """HWC uint8 after DecodeImage (or the validated array)."""
        if isinstance(image, np.ndarray):
            return self._array(image)
        path = os.fspath(image)
        try:
            with open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            raise DataError(f"image not found: {path}") from None
        except IsADirectoryError:
            raise DataError(f"{path} is a directory, not an image") from None
        except OSError as e:
            raise DataError(f"cannot read image {path}: {e.strerror or e}") from None
        try:
            return self.decode(data, self._rng)
        except DataError:
            raise DataError(f"cannot decode image {path} (not an image file?)") from None

    def _run(self, image, skip=()):
        img = self._decoded(image)
        for op in self.ops[1:]:
            if not isinstance(op, skip):
                img = op(img, self._rng)
        return img

    def __call__(self, image):
        out = np.asarray(self._run(image), dtype=np.float32)
        if out.shape != self.input_shape:
            raise DataError(f"preprocessing produced shape {list(out.shape)} but the model "
                            f"expects {list(self.input_shape)}; check the eval transform_ops "
                            f"(resize/crop size, ToCHWImage)")
        return out

    def display_image(self, image):
        """The image as the model sees it (resized/cropped), before normalisation: HWC uint8
        RGB, for drawing heat maps over."""
        from .data.transforms import NormalizeImage, ToCHWImage

        img = self._run(image, skip=(NormalizeImage, ToCHWImage))
        if self.decode.channel_first:
            img = img.transpose(1, 2, 0)
        if not self.decode.to_rgb:
            img = img[:, :, ::-1]
        return np.ascontiguousarray(img)


# ----------------------------------------------------------------------------- models

def bf16_supported():
    """True when this CPU runs oneDNN bf16 kernels (AVX512-BF16 / AMX)."""
    from paddle.base import core

    return bool(core.is_compiled_with_onednn() and core.supports_bfloat16())


def _resolve_device(device):
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


class Classifier:
    """A model ready for prediction: a dygraph Layer (`kind == 'dygraph'`, `.model`) or a
    paddle.inference predictor (`kind == 'predictor'`), with its preprocessing and labels."""

    def __init__(self, kind, preprocess, class_names, topk, name, model=None, predictor=None,
                 cfg=None):
        self.kind = kind
        self.preprocess = preprocess
        self.class_names = class_names
        self.topk = topk
        self.name = name
        self.model = model
        self.predictor = predictor
        self.cfg = cfg

    @property
    def input_shape(self):
        return self.preprocess.input_shape

    def logits(self, batch):
        """[B, C, H, W] float32 -> logits [B, class_num] as a numpy array."""
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        if self.kind == "dygraph":
            import paddle

            with paddle.no_grad():
                return self.model(paddle.to_tensor(batch)).numpy()
        p = self.predictor
        handle = p.get_input_handle(p.get_input_names()[0])
        handle.reshape(list(batch.shape))
        handle.copy_from_cpu(batch)
        p.run()
        return p.get_output_handle(p.get_output_names()[0]).copy_to_cpu()

    def __repr__(self):
        return (f"Classifier({self.name}, {self.kind}, input {list(self.input_shape)}, "
                f"{len(self.class_names) if self.class_names else 'no'} class names)")


def _as_config(config):
    from .config import AttrDict, get_config, validate_config

    if isinstance(config, dict):
        return validate_config(config if isinstance(config, AttrDict) else AttrDict(config))
    return get_config(os.fspath(config))


def build_dygraph(cfg, checkpoint=None):
    """The config's model in eval mode with `checkpoint` (or Global.pretrained_model) loaded
    strictly; random weights (with a warning) when there is none."""
    from .convert.pretrained import load_pretrained
    from .models import build_model

    model = build_model(dict(cfg.Model))
    weights = checkpoint or cfg.Global.get("pretrained_model")
    if weights:
        load_pretrained(model, os.fspath(weights), finetune=False, log=logger.info)
    else:
        logger.warning("no checkpoint given: %s has random weights", cfg.Model.name)
    model.eval()
    return model


def _input_shape(cfg, model):
    size = int(getattr(model, "img_size", cfg.Model.get("img_size", 224)))
    return (int(cfg.Model.get("in_chans", 3)), size, size)


def init_model(config_or_path, checkpoint=None, device=None, precision="fp32", threads=None):
    """A `Classifier` from a config (path or dict; + optional checkpoint prefix) or from an
    exported model directory (tools/export.py output).

    device: None = a GPU when this Paddle has CUDA and sees one, else CPU. precision (exported
    models on CPU only): 'fp32' or 'bf16' (oneDNN; needs AVX512-BF16/AMX). threads: CPU math
    threads of the predictor (default OMP_NUM_THREADS, else every core)."""
    if precision not in ("fp32", "bf16"):
        raise ConfigError(f"precision must be 'fp32' or 'bf16', got {precision!r}")
    device = _resolve_device(device)
    if isinstance(config_or_path, (str, os.PathLike)) and not os.path.exists(config_or_path) \
            and not os.fspath(config_or_path).endswith((".yaml", ".yml")):
        raise DataError(f"{os.fspath(config_or_path)} does not exist (expected a config file or "
                        f"an exported model directory)")
    if isinstance(config_or_path, (str, os.PathLike)) and os.path.isdir(config_or_path):
        if checkpoint is not None:
            raise ConfigError(f"{config_or_path} is an exported model directory: it carries its "
                              f"weights, do not pass a checkpoint")
        return _init_exported(os.fspath(config_or_path), device, precision, threads)
    if precision != "fp32":
        raise ConfigError("precision 'bf16' is for exported models (paddle.inference); "
                          "export the model first (tools/export.py)")
    import paddle

    cfg = _as_config(config_or_path)
    paddle.set_device(device)
    model = build_dygraph(cfg, checkpoint)
    shape = _input_shape(cfg, model)
    preprocess = Preprocess(eval_transform_ops(cfg, shape[1]), shape)
    names, _ = resolve_class_names(cfg, int(getattr(model, "class_num", 0) or 0))
    return Classifier("dygraph", preprocess, names, int(cfg.Infer.topk), cfg.Model.name,
                      model=model, cfg=cfg)


def _export_files(model_dir):
    """{'model', 'params', 'infer_cfg'} paths; DataError naming the first missing file."""
    if not os.path.isdir(model_dir):
        raise DataError(f"exported model directory not found: {model_dir}")
    model_file = next((os.path.join(model_dir, m) for m in MODEL_FILES
                       if os.path.isfile(os.path.join(model_dir, m))), None)
    expected = f"(tools/export.py writes {MODEL_FILES[0]}, {PARAMS_FILE} and {INFER_CFG})"
    if model_file is None:
        raise DataError(f"exported model directory {model_dir} lacks {MODEL_FILES[0]} {expected}")
    for name in (PARAMS_FILE, INFER_CFG):
        if not os.path.isfile(os.path.join(model_dir, name)):
            raise DataError(f"exported model directory {model_dir} lacks {name} {expected}")
    return {"model": model_file, "params": os.path.join(model_dir, PARAMS_FILE),
            "infer_cfg": os.path.join(model_dir, INFER_CFG)}


def read_infer_cfg(path):
    """(name, input_shape [C, H, W], transform_ops, class_names, topk) from infer_cfg.yaml."""
    from .config import load_yaml

    data = load_yaml(path)
    try:
        shape = [int(v) for v in data["Export"]["input_shape"][1:]]
        ops = data["PreProcess"]["transform_ops"]
        post = data.get("PostProcess") or {}
        names = post.get("class_names")
        topk = int(post.get("topk", 5))
        name = (data.get("Model") or {}).get("name", "exported model")
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise ConfigError(f"{path}: not a plsc infer_cfg.yaml (missing or bad {e})") from None
    if len(shape) != 3 or not isinstance(ops, list):
        raise ConfigError(f"{path}: Export.input_shape must be [N, C, H, W] and "
                          f"PreProcess.transform_ops a list")
    return name, shape, ops, [str(n) for n in names] if names else None, topk


def create_predictor(model_file, params_file, device="cpu", precision="fp32", threads=None):
    """A paddle.inference predictor: CPU with oneDNN when compiled in (bf16 on request), or GPU."""
    import paddle.inference as pi
    from paddle.base import core

    config = pi.Config(model_file, params_file)
    if device.startswith("gpu"):
        if precision != "fp32":
            raise ConfigError("precision 'bf16' is a CPU (oneDNN) option; use fp32 on GPU")
        config.enable_use_gpu(256, int(device.split(":")[1]) if ":" in device else 0)
    else:
        config.disable_gpu()
        threads = threads or int(os.environ.get("OMP_NUM_THREADS") or os.cpu_count() or 1)
        config.set_cpu_math_library_num_threads(int(threads))
        if core.is_compiled_with_onednn():
            config.enable_onednn()
        if precision == "bf16":
            if not bf16_supported():
                raise ConfigError("bf16 inference is not supported on this CPU (needs "
                                  "AVX512-BF16 or AMX with a oneDNN build of Paddle)")
            config.enable_onednn_bfloat16()
    config.disable_glog_info()
    return pi.create_predictor(config)


def _init_exported(model_dir, device, precision, threads):
    files = _export_files(model_dir)
    name, shape, ops, names, topk = read_infer_cfg(files["infer_cfg"])
    predictor = create_predictor(files["model"], files["params"], device, precision, threads)
    return Classifier("predictor", Preprocess(ops, shape), names, topk, name,
                      predictor=predictor)


# ----------------------------------------------------------------------------- prediction

def softmax(logits):
    """Row softmax in float64 (scores are reported, so no float32 rounding)."""
    z = np.asarray(logits, dtype=np.float64)
    z = np.exp(z - z.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def postprocess(logits, topk, class_names):
    """Logits [B, C] -> one result dict per row (see inference_model)."""
    probs = softmax(logits)
    k = max(1, min(int(topk), probs.shape[1]))
    out = []
    for row in probs:
        order = np.argsort(-row, kind="stable")[:k]  # ties: lower label first, like argmax
        labels = [int(i) for i in order]
        classes = [class_names[i] if class_names and i < len(class_names) else None
                   for i in labels]
        out.append({"pred_label": labels[0], "pred_score": float(row[labels[0]]),
                    "pred_class": classes[0], "topk_labels": labels,
                    "topk_scores": [float(row[i]) for i in labels], "topk_classes": classes})
    return out


def _as_list(image):
    if isinstance(image, np.ndarray) and image.ndim == 4:
        return list(image), False
    if isinstance(image, (list, tuple)):
        return list(image), False
    return [image], True


def inference_model(model, image, batch_size=16, topk=None):
    """Predict one image (path or HWC uint8 RGB array) -> dict, or a list of them -> list.

    Keys: pred_label (int), pred_score (softmax probability), pred_class (name or None),
    topk_labels, topk_scores, topk_classes (best first, k = topk or model.topk)."""
    images, single = _as_list(image)
    topk = model.topk if topk is None else topk
    results = []
    for start in range(0, len(images), batch_size):
        batch = np.stack([model.preprocess(im) for im in images[start:start + batch_size]])
        results += postprocess(model.logits(batch), topk, model.class_names)
    return results[0] if single else results


def _require_dygraph(model, what):
    if getattr(model, "kind", None) != "dygraph":
        raise ConfigError(f"{what} needs the dygraph model: init_model(config, checkpoint), "
                          f"not an exported model directory")
    return model.model


def extract_feat(model, image):
    """Final normed tokens of forward_features, as numpy:
    patch_tokens [B, D, h, w] (the patch tokens on their grid) and cls_feature [B, D] (the class
    token; the mean of the patch tokens for gap models, which is what their head pools)."""
    import paddle

    net = _require_dygraph(model, "extract_feat")
    images, _ = _as_list(image)
    batch = np.stack([model.preprocess(im) for im in images])
    with paddle.no_grad():
        tokens = net.forward_features(paddle.to_tensor(batch)).numpy()
    prefix = int(net.num_prefix_tokens)
    gh, gw = net.patch_embed.grid_size
    patches = tokens[:, prefix:]
    cls = tokens[:, 0] if prefix else patches.mean(axis=1)
    grid = patches.reshape(len(tokens), gh, gw, -1).transpose(0, 3, 1, 2)
    return {"patch_tokens": np.ascontiguousarray(grid), "cls_feature": cls}


# ----------------------------------------------------------------------------- attention

def attention_rollout(attn_list, num_prefix_tokens, discard_ratio=0.0, return_matrix=False):
    """Attention rollout (Abnar & Zuidema 2020) of per-layer attention probabilities.

    attn_list: per layer [B, H, N, N] (numpy or paddle), first layer first. Per layer: average
    the heads; optionally zero the smallest `discard_ratio` fraction of entries (per image,
    never the attention paid to prefix tokens, which would cut the class token off); add the
    identity (the residual path) and renormalise rows to 1. The rollout is the product
    A_L ... A_2 A_1 (row i: how much output token i draws from each input token).

    Returns the map [B, N - num_prefix_tokens] over the patch tokens: the class-token row for
    token models, the mean row over all tokens for gap models (num_prefix_tokens == 0).
    With return_matrix, (map, rollout [B, N, N]). Float64."""
    if not attn_list:
        raise ConfigError("attention_rollout needs at least one layer of attention")
    if not 0.0 <= float(discard_ratio) < 1.0:
        raise ConfigError(f"discard_ratio must be in [0, 1), got {discard_ratio!r}")
    prefix = int(num_prefix_tokens)
    joint = None
    for layer in attn_list:
        a = np.asarray(layer.numpy() if hasattr(layer, "numpy") else layer, dtype=np.float64)
        if a.ndim != 4 or a.shape[2] != a.shape[3]:
            raise ConfigError(f"attention must be [B, heads, N, N] per layer, got "
                              f"{list(a.shape)}")
        a = a.mean(axis=1)  # [B, N, N]
        b, n, _ = a.shape
        if discard_ratio > 0:
            cand = a[:, :, prefix:].reshape(b, -1).copy()
            k = int(discard_ratio * cand.shape[1])
            if k:
                drop = np.argsort(cand, axis=1, kind="stable")[:, :k]
                np.put_along_axis(cand, drop, 0.0, axis=1)
                a[:, :, prefix:] = cand.reshape(b, n, n - prefix)
        a = a + np.eye(n)
        a = a / a.sum(axis=-1, keepdims=True)
        joint = a if joint is None else a @ joint
    rows = joint[:, 0, prefix:] if prefix else joint.mean(axis=1)
    return (rows, joint) if return_matrix else rows


def attention_map(model, image, discard_ratio=0.0):
    """(rollout map [h, w] over the patch grid, display image HWC uint8) for one image."""
    import paddle

    net = _require_dygraph(model, "attention rollout")
    x = paddle.to_tensor(model.preprocess(image)[None])
    with paddle.no_grad():
        _, attns = net.forward_features(x, return_attn=True)
    rows = attention_rollout(attns, net.num_prefix_tokens, discard_ratio)
    gh, gw = net.patch_embed.grid_size
    return rows[0].reshape(gh, gw), model.preprocess.display_image(image)


# ----------------------------------------------------------------------------- export

def save_inference_model(model, prefix, input_shape):
    """paddle.jit.to_static + jit.save of an eval-mode Layer with a dynamic batch dimension.
    Returns the files written ({'model', 'params'})."""
    import paddle
    from paddle.static import InputSpec

    model.eval()
    spec = InputSpec([None] + [int(v) for v in input_shape], "float32", "x")
    static = paddle.jit.to_static(model, input_spec=[spec], full_graph=True)
    paddle.jit.save(static, prefix)
    model_file = next((prefix + ext for ext in (".json", ".pdmodel")
                       if os.path.isfile(prefix + ext)), None)
    return {"model": model_file, "params": prefix + ".pdiparams"}


def _export_input_shape(cfg, model):
    """[C, H, W] to export: Export.input_shape when the config sets it (it must match the
    model), else the model's own resolution. The batch dimension is always dynamic."""
    from .config import source_of

    own = _input_shape(cfg, model)
    if source_of(cfg, ("Export", "input_shape")) is None:
        return own
    given = list(cfg.Export.input_shape)
    if len(given) != 4 or any(v is None for v in given[1:]) or tuple(given[1:]) != own:
        raise ConfigError(f"Export.input_shape {given} does not fit the model: expected "
                          f"[None, {own[0]}, {own[1]}, {own[2]}] (Model img_size {own[1]})")
    return own


def export_model(cfg, weights=None, output_dir=None, device="cpu", check=False):
    """Export a config's model with its weights to `{output_dir}/{Model.name}/export/`:
    inference.json + inference.pdiparams (fp32, whatever FP16 says) and infer_cfg.yaml (eval
    preprocessing, class names, topk). All files appear together or not at all.

    check: also run the exported predictor and the dygraph model on the same random batch
    and report the largest |logit difference| as 'check_max_diff'.
    Returns {'dir', 'model', 'params', 'infer_cfg', 'input_shape', 'class_names_source'}."""
    import shutil

    import paddle

    from .config import dump_config

    weights = weights or cfg.Global.get("pretrained_model") or cfg.Global.get("checkpoint")
    if not weights:
        raise ConfigError("export needs trained weights: set -o Global.pretrained_model=PREFIX")
    paddle.set_device(device)
    model = build_dygraph(cfg, weights)  # fp32 parameters: no AMP decoration here
    shape = _export_input_shape(cfg, model)
    class_num = int(getattr(model, "class_num", 0) or 0)
    names, names_source = resolve_class_names(cfg, class_num)
    ops = eval_transform_ops(cfg, shape[1])
    Preprocess(ops, shape)  # fail now, not at prediction time, on a bad transform list
    if check:  # before to_static, which converts the Layer's forward in place
        probe = np.random.default_rng(0).standard_normal((2, *shape)).astype(np.float32)
        with paddle.no_grad():
            expected = model(paddle.to_tensor(probe)).numpy()

    out_dir = os.path.join(output_dir or cfg.Global.output_dir, cfg.Model.name, "export")
    os.makedirs(os.path.dirname(out_dir), exist_ok=True)
    tmp = f"{out_dir}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        files = save_inference_model(model, os.path.join(tmp, EXPORT_PREFIX), shape)
        infer_cfg = {
            "Model": {"name": cfg.Model.name, "class_num": class_num, "img_size": shape[1]},
            "Export": {"input_shape": [None, *shape], "precision": "fp32",
                       "weights": os.fspath(weights)},
            "PreProcess": {"transform_ops": ops},
            "PostProcess": {"name": "Topk", "topk": int(cfg.Infer.topk),
                            "class_names_source": names_source, "class_names": names},
        }
        with open(os.path.join(tmp, INFER_CFG), "w", encoding="utf-8") as f:
            f.write(dump_config(infer_cfg))
        if os.path.isdir(out_dir):
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result = {"dir": out_dir,
              "model": os.path.join(out_dir, os.path.basename(files["model"])),
              "params": os.path.join(out_dir, PARAMS_FILE),
              "infer_cfg": os.path.join(out_dir, INFER_CFG),
              "input_shape": [None, *shape], "class_names_source": names_source}
    if check:
        predictor = init_model(out_dir, device=device)
        result["check_max_diff"] = float(np.abs(predictor.logits(probe) - expected).max())
    return result
