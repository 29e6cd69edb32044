"""Eval preprocessing of a model: image (path or array) -> CHW float32, exactly the config's
eval transforms (or the official squash-resize when a config has none)."""
import os

import numpy as np

from ..errors import DataError


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
        from ..data.transforms import DecodeImage, create_operators

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
        from ..data.transforms import NormalizeImage, ToCHWImage

        img = self._run(image, skip=(NormalizeImage, ToCHWImage))
        if self.decode.channel_first:
            img = img.transpose(1, 2, 0)
        if not self.decode.to_rgb:
            img = img[:, :, ::-1]
        return np.ascontiguousarray(img)
