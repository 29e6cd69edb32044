"""Exported models: paddle.jit.save of a trained model plus its preprocessing and class names
(infer_cfg.yaml), and paddle.inference predictors that read them back."""
import os
import shutil

import numpy as np

from ..errors import ConfigError, DataError
from ..quiet import JIT_SAVE_NOISE, drop_stderr_lines
from .classifier import Classifier
from .dygraph import build_dygraph, input_shape
from .labels import resolve_class_names
from .preprocess import Preprocess, eval_transform_ops

# What tools/export.py writes into {output_dir}/{Model.name}/export/.
EXPORT_PREFIX = "inference"
INFER_CFG = "infer_cfg.yaml"
PARAMS_FILE = EXPORT_PREFIX + ".pdiparams"
MODEL_FILES = (EXPORT_PREFIX + ".json", EXPORT_PREFIX + ".pdmodel")  # Paddle 3.x (PIR), 2.x


def bf16_supported():
    """True when this CPU runs oneDNN bf16 kernels (AVX512-BF16 / AMX)."""
    from paddle.base import core

    return bool(core.is_compiled_with_onednn() and core.supports_bfloat16())


def export_files(model_dir):
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
    from ..config import load_yaml

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


def init_exported(model_dir, device, precision="fp32", threads=None):
    """Classifier of kind 'predictor' from an exported model directory."""
    files = export_files(model_dir)
    name, shape, ops, names, topk = read_infer_cfg(files["infer_cfg"])
    predictor = create_predictor(files["model"], files["params"], device, precision, threads)
    return Classifier("predictor", Preprocess(ops, shape), names, topk, name,
                      predictor=predictor, source=model_dir)


def save_inference_model(model, prefix, input_shape):
    """paddle.jit.to_static + jit.save of an eval-mode Layer with a dynamic batch dimension.
    Returns the files written ({'model', 'params'})."""
    import paddle
    from paddle.static import InputSpec

    model.eval()
    spec = InputSpec([None] + [int(v) for v in input_shape], "float32", "x")
    static = paddle.jit.to_static(model, input_spec=[spec], full_graph=True)
    with drop_stderr_lines(JIT_SAVE_NOISE):  # plsc/quiet.py says why
        paddle.jit.save(static, prefix)
    model_file = next((prefix + ext for ext in (".json", ".pdmodel")
                       if os.path.isfile(prefix + ext)), None)
    return {"model": model_file, "params": prefix + ".pdiparams"}


def export_input_shape(cfg, model):
    """[C, H, W] to export: Export.input_shape when the config sets it (it must match the
    model), else the model's own resolution. The batch dimension is always dynamic."""
    from ..config import source_of

    own = input_shape(cfg, model)
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


    import paddle

    from ..config import dump_config

    weights = weights or cfg.Global.get("pretrained_model") or cfg.Global.get("checkpoint")
    if not weights:
        raise ConfigError("export needs trained weights: set -o Global.pretrained_model=PREFIX")
    paddle.set_device(device)
    model = build_dygraph(cfg, weights)  # fp32 parameters: no AMP decoration here
    shape = export_input_shape(cfg, model)
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
        predictor = init_exported(out_dir, device)
        result["check_max_diff"] = float(np.abs(predictor.logits(probe) - expected).max())
    return result
