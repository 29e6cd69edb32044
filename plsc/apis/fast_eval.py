"""The fast evaluation path: the engine's evaluator runs an exported paddle.inference predictor
(oneDNN, about 2x the dygraph model's images/s on CPU) in place of the dygraph model.

`tools/eval.py --exported DIR` uses it; the data, loss and metrics stay the config's, so the
result equals dygraph evaluation within float noise (tests/test_speed_paths.py).
"""
import logging

import numpy as np

from ..errors import ConfigError
from .exported import create_predictor, export_files, read_infer_cfg

logger = logging.getLogger("plsc")


class PredictorModel:
    """What the evaluator needs of a model (`model(images)` -> logits tensor, `training`,
    `eval()`) over a paddle.inference predictor. Evaluation only: there is no train mode."""

    training = False

    def __init__(self, predictor):
        self.predictor = predictor
        self._input = predictor.get_input_handle(predictor.get_input_names()[0])
        self._output = predictor.get_output_handle(predictor.get_output_names()[0])

    def eval(self):
        return self

    def __call__(self, images):
        import paddle

        batch = np.ascontiguousarray(images.numpy(), dtype=np.float32)
        self._input.reshape(list(batch.shape))
        self._input.copy_from_cpu(batch)
        self.predictor.run()
        return paddle.to_tensor(self._output.copy_to_cpu())


def exported_eval_model(model_dir, cfg, device="cpu", threads=None, precision="fp32"):
    """PredictorModel of the exported `model_dir` for evaluating `cfg`: the export must be of
    the config's model at the config's resolution (its weights replace Global.pretrained_model)."""
    files = export_files(model_dir)
    name, shape, _, _, _ = read_infer_cfg(files["infer_cfg"])
    size = cfg.Model.get("img_size")
    if name != cfg.Model.name or (size is not None and int(size) != shape[1]):
        raise ConfigError(f"--exported {model_dir} holds {name} at {shape[1]}px but the config "
                          f"evaluates {cfg.Model.name}"
                          + (f" at {size}px" if size is not None else ""))
    logger.info(f"evaluating through the exported predictor in {model_dir} ({precision})")
    return PredictorModel(create_predictor(files["model"], files["params"], device, precision,
                                           threads))
