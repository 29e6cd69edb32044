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
exported model and of the dygraph model it came from agree (tests/test_export.py). An exported
graph computes logits only: extract_feat and attention_map need the dygraph model.

Modules: labels (class names), preprocess, classifier (Classifier, prediction, features),
dygraph (a config's model; Global.to_static gives a static-graph forward), exported (export and
paddle.inference predictors), fast_eval (the evaluator over a predictor: tools/eval.py --exported),
rollout.
"""
import os

from ..errors import ConfigError, DataError
from .classifier import (Classifier, extract_feat, inference_model, pooled_feature,
                         postprocess, softmax)
from .dygraph import build_dygraph, init_dygraph, resolve_device
from .exported import (EXPORT_PREFIX, INFER_CFG, MODEL_FILES, PARAMS_FILE, bf16_supported,
                       create_predictor, export_model, init_exported, read_infer_cfg,
                       save_inference_model)
from .labels import BUILTIN_LABELS, RESOURCES, load_class_names, resolve_class_names
from .preprocess import Preprocess, default_eval_ops, eval_transform_ops
from .rollout import attention_map, attention_rollout

__all__ = ["Classifier", "Preprocess", "init_model", "inference_model", "extract_feat",
           "attention_rollout", "attention_map", "export_model", "save_inference_model",
           "postprocess", "create_predictor", "read_infer_cfg", "build_dygraph",
           "load_class_names", "resolve_class_names", "eval_transform_ops", "softmax",
           "bf16_supported", "pooled_feature", "default_eval_ops", "BUILTIN_LABELS",
           "RESOURCES", "EXPORT_PREFIX", "INFER_CFG", "PARAMS_FILE", "MODEL_FILES"]


def init_model(config_or_path, checkpoint=None, device=None, precision="fp32", threads=None):
    """A `Classifier` from a config (path or dict; + optional checkpoint prefix) or from an
    exported model directory (tools/export.py output).

    device: None = a GPU when this Paddle has CUDA and sees one, else CPU. precision (exported
    models on CPU only): 'fp32' or 'bf16' (oneDNN; needs AVX512-BF16/AMX). threads: CPU math
    threads of the predictor (default OMP_NUM_THREADS, else every core)."""
    if precision not in ("fp32", "bf16"):
        raise ConfigError(f"precision must be 'fp32' or 'bf16', got {precision!r}")
    device = resolve_device(device)
    is_path = isinstance(config_or_path, (str, os.PathLike))
    if is_path and not os.path.exists(config_or_path) \
            and not os.fspath(config_or_path).endswith((".yaml", ".yml")):
        raise DataError(f"{os.fspath(config_or_path)} does not exist (expected a config file or "
                        f"an exported model directory)")
    if is_path and os.path.isdir(config_or_path):
        if checkpoint is not None:
            raise ConfigError(f"{config_or_path} is an exported model directory: it carries its "
                              f"weights, do not pass a checkpoint")
        return init_exported(os.fspath(config_or_path), device, precision, threads)
    if precision != "fp32":
        raise ConfigError("precision 'bf16' is for exported models (paddle.inference); "
                          "export the model first (tools/export.py)")
    return init_dygraph(config_or_path, checkpoint, device)
