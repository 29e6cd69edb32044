"""Per-sample image transforms with PLSC's names and config keys.

Every transform is a callable `op(img, rng)`: `img` is what the previous op returned (bytes for
DecodeImage, then an HWC uint8 array, then float32 after NormalizeImage), `rng` a
`numpy.random.Generator`. Random ops draw only from `rng`, which the dataset seeds per sample from
(global seed, epoch, index): augmentation then does not depend on worker count, process count or
resume point. Resizing uses OpenCV; `backend: pil` gives Pillow's (antialiased) filters instead.
"""
import io
import math
import warnings
from typing import Annotated, List, Literal, Optional, Tuple, Union

import cv2
import numpy as np

from ..config import Rule, ge, gt
from ..errors import DataError
from ..registry import TRANSFORMS

INTERPOLATIONS = ["nearest", "bilinear", "bicubic", "area", "lanczos"]
# The config types of the transforms' keys (checked by the config validator, trusted here).
Interpolation = Optional[Literal["nearest", "bilinear", "bicubic", "area", "lanczos", "random"]]
Backend = Literal["cv2", "pil"]
Side = Annotated[int, ge(1)]
Size = Union[Side, Tuple[Side, Side]]  # int: square; [width, height]
Positive = Annotated[float, gt(0)]
Scale = Annotated[Tuple[Positive, Positive], Rule("(min <= max <= 1)",
                                                  lambda s: s[0] <= s[1] <= 1)]
Ratio = Annotated[Tuple[Positive, Positive], Rule("(min <= max)", lambda r: r[0] <= r[1])]
_CV2_FLAGS = {"nearest": cv2.INTER_NEAREST, "bilinear": cv2.INTER_LINEAR,
              "bicubic": cv2.INTER_CUBIC, "area": cv2.INTER_AREA, "lanczos": cv2.INTER_LANCZOS4}
# The largest image DecodeImage decodes (8192 x 8192: 200 MB as uint8 RGB). A header can claim
# any size, and OpenCV allocates (and for JPEG fills) the whole claimed image before it finds
# the data missing: a 30000 x 30000 header in a few hundred bytes costs it 2.7 GB and a minute.
MAX_IMAGE_PIXELS = 1 << 26

def _imdecode_quietly(data, flag=cv2.IMREAD_COLOR):
    """cv2.imdecode without OpenCV's log lines ("[ WARN:0@..] PNG input buffer is incomplete",
    "[ERROR:0@..] imdecode_ ... can't read data"): the caller reports a failure in one line."""
    logging = getattr(getattr(cv2, "utils", None), "logging", None)
    if logging is None:  # an OpenCV build without the logging module
        return cv2.imdecode(data, flag)
    level = logging.getLogLevel()
    logging.setLogLevel(logging.LOG_LEVEL_SILENT)
    try:
        return cv2.imdecode(data, flag)
    finally:
        logging.setLogLevel(level)


class ImageDecodeError(DataError):
    """The bytes are not an image OpenCV can decode (the dataset adds the file name).

    `reason` says why, when more is known than "not decodable" (e.g. too many pixels)."""

    def __init__(self, message, reason=None):
        super().__init__(message)
        self.reason = reason


def _header_size(data):
    """(width, height) from the image header (Pillow reads only the header), or None when
    Pillow does not recognise the data (OpenCV then tries it as before)."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                return im.size
    except Image.DecompressionBombError as e:  # Pillow's own limit, above ours: still a size
        return _bomb_size(e)
    except Exception:  # noqa: BLE001 - unidentifiable or damaged header: OpenCV decides
        return None


def _bomb_size(error):
    import re

    m = re.search(r"\((\d+) pixels\)", str(error))
    n = int(m.group(1)) if m else MAX_IMAGE_PIXELS + 1
    return n, 1


def _size(size):
    """int -> (w, h) square; [w, h] -> (w, h)."""
    return (size, size) if isinstance(size, int) else tuple(size)


def resize(img, size, interpolation=None, backend="cv2", rng=None):
    """Resize an HWC array to size=(w, h). interpolation None = bilinear; 'random' draws one."""
    w, h = size
    if interpolation == "random":
        interpolation = INTERPOLATIONS[int(rng.integers(len(INTERPOLATIONS)))]
    interpolation = interpolation or "bilinear"
    if backend == "pil":
        from PIL import Image  # only when asked: Pillow's filters antialias when downscaling

        filters = {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC,
                   "area": Image.BOX, "lanczos": Image.LANCZOS}
        return np.asarray(Image.fromarray(img).resize((w, h), filters[interpolation]))
    out = cv2.resize(img, (w, h), interpolation=_CV2_FLAGS[interpolation])
    if out.ndim == 2 and img.ndim == 3:  # cv2 drops a single channel axis
        out = out[:, :, None]
    return out


@TRANSFORMS.register()
class DecodeImage:
    """Encoded bytes (or a file path) -> HWC uint8, RGB when to_rgb. Arrays pass through
    unchanged (in-memory datasets such as CIFAR already hold decoded RGB pixels)."""

    def __init__(self, to_rgb: bool = True, channel_first: bool = False):
        self.to_rgb = to_rgb
        self.channel_first = channel_first

    def __call__(self, img, rng=None):
        if isinstance(img, np.ndarray):
            return img
        if isinstance(img, str):
            with open(img, "rb") as f:
                img = f.read()
        data = np.frombuffer(img, dtype=np.uint8)
        size = _header_size(img) if data.size else None
        if size is not None and size[0] * size[1] > MAX_IMAGE_PIXELS:
            w, h = size
            reason = (f"{w}x{h} pixels" if h > 1 else f"{w} pixels") + \
                f", more than DecodeImage's limit of {MAX_IMAGE_PIXELS}"
            raise ImageDecodeError(f"cannot decode image ({data.size} bytes): {reason}", reason)
        # OpenCV >= 4.10 decodes straight to RGB (the same pixels, without a cvtColor pass)
        rgb_flag = getattr(cv2, "IMREAD_COLOR_RGB", None) if self.to_rgb else None
        try:
            out = _imdecode_quietly(data, rgb_flag or cv2.IMREAD_COLOR) if data.size else None
        except cv2.error:  # e.g. a header over OpenCV's own pixel limit
            out = None
        if out is None:
            raise ImageDecodeError(f"cannot decode image ({data.size} bytes)")
        if self.to_rgb and rgb_flag is None:
            out = cv2.cvtColor(out, cv2.COLOR_BGR2RGB)
        if self.channel_first:
            out = out.transpose(2, 0, 1)
        return out


@TRANSFORMS.register()
class RandCropImage:
    """Inception-style random resized crop: area fraction ~ U(scale), log aspect ratio
    ~ U(log ratio); 10 attempts, then a center crop with the ratio clamped to the allowed range."""

    def __init__(self, size: Size, scale: Scale = (0.08, 1.0),
                 ratio: Ratio = (3.0 / 4.0, 4.0 / 3.0), interpolation: Interpolation = None,
                 backend: Backend = "cv2"):
        self.size = _size(size)
        self.scale = list(scale)
        self.ratio = list(ratio)
        self.interpolation = interpolation
        self.backend = backend

    def crop_box(self, height, width, rng):
        """(top, left, crop_h, crop_w) for an image of that size."""
        area = height * width
        log_lo, log_hi = math.log(self.ratio[0]), math.log(self.ratio[1])
        for _ in range(10):
            target = area * rng.uniform(self.scale[0], self.scale[1])
            aspect = math.exp(rng.uniform(log_lo, log_hi))
            w = int(round(math.sqrt(target * aspect)))
            h = int(round(math.sqrt(target / aspect)))
            if 0 < w <= width and 0 < h <= height:
                top = int(rng.integers(0, height - h + 1))
                left = int(rng.integers(0, width - w + 1))
                return top, left, h, w
        # Fallback: the largest centered crop whose aspect ratio is within bounds.
        in_ratio = width / height
        if in_ratio < self.ratio[0]:
            w, h = width, int(round(width / self.ratio[0]))
        elif in_ratio > self.ratio[1]:
            h, w = height, int(round(height * self.ratio[1]))
        else:
            w, h = width, height
        return (height - h) // 2, (width - w) // 2, h, w

    def __call__(self, img, rng):
        top, left, h, w = self.crop_box(img.shape[0], img.shape[1], rng)
        crop = img[top:top + h, left:left + w]
        return resize(crop, self.size, self.interpolation, self.backend, rng)


@TRANSFORMS.register()
class RandomResizedCrop(RandCropImage):
    """RandCropImage under torchvision's name and defaults (bilinear)."""

    def __init__(self, size: Size, scale: Scale = (0.08, 1.0),
                 ratio: Ratio = (3.0 / 4.0, 4.0 / 3.0), interpolation: Interpolation = "bilinear",
                 backend: Backend = "cv2"):
        super().__init__(size, scale, ratio, interpolation, backend)


def _one_size(values):
    if (values["size"] is None) == (values["resize_short"] is None):
        return ("set exactly one of 'size' and 'resize_short', got "
                f"size={values['size']!r}, resize_short={values['resize_short']!r}")
    return None


@TRANSFORMS.register(check=_one_size)
class ResizeImage:
    """`size` squashes to (w, h) ignoring aspect; `resize_short` scales the short side to that
    length and keeps the aspect ratio (long side rounded). Exactly one of them."""

    def __init__(self, size: Optional[Size] = None, resize_short: Optional[Side] = None,
                 interpolation: Interpolation = None, backend: Backend = "cv2"):
        self.size = None if size is None else _size(size)
        self.resize_short = resize_short
        self.interpolation = interpolation
        self.backend = backend

    def output_size(self, height, width):
        if self.size is not None:
            return self.size
        percent = self.resize_short / min(height, width)
        return int(round(width * percent)), int(round(height * percent))

    def __call__(self, img, rng=None):
        return resize(img, self.output_size(img.shape[0], img.shape[1]), self.interpolation,
                      self.backend, rng)


@TRANSFORMS.register()
class CenterCropImage:
    """Crop (w, h) from the center; offsets round down like PLSC."""

    def __init__(self, size: Size):
        self.size = _size(size)

    def __call__(self, img, rng=None):
        w, h = self.size
        img_h, img_w = img.shape[:2]
        if w > img_w or h > img_h:
            raise DataError(f"CenterCropImage: crop {w}x{h} is larger than the image {img_w}x{img_h}; "
                            "resize first (ResizeImage.resize_short)")
        top, left = (img_h - h) // 2, (img_w - w) // 2
        return img[top:top + h, left:left + w]


@TRANSFORMS.register()
class RandFlipImage:
    """Flip with probability 1/2: flip_code 1 horizontal, 0 vertical, -1 both (cv2.flip codes)."""

    def __init__(self, flip_code: Literal[1, 0, -1] = 1):
        self.flip_code = flip_code

    def __call__(self, img, rng):
        if rng.random() < 0.5:
            return cv2.flip(img, self.flip_code)
        return img


@TRANSFORMS.register()
class NormalizeImage:
    """(img * scale - mean) / std in float32. order '' = HWC input, 'chw' = CHW input."""

    def __init__(self, scale: float = 1.0 / 255.0, mean: List[float] = (0.485, 0.456, 0.406),
                 std: List[float] = (0.229, 0.224, 0.225), order: Literal["", "hwc", "chw"] = "",
                 output_fp16: bool = False):
        # `scale: 1.0/255.0` (PLSC's form) is already a float: the config loader types fractions
        self.scale = np.float32(scale)
        shape = (-1, 1, 1) if order == "chw" else (1, 1, -1)
        self.order = order
        self.mean = np.array(mean, np.float32).reshape(shape)
        self.std = np.array(std, np.float32).reshape(shape)
        self.output_fp16 = output_fp16

    def _normalize(self, values):
        with np.errstate(divide="ignore", invalid="ignore"):  # std 0 gives inf, as numpy would
            return (values.astype(np.float32) * self.scale - self.mean) / self.std

    def __call__(self, img, rng=None):
        channels = img.shape[2] if img.ndim == 3 else 0
        if img.dtype == np.uint8 and self.order != "chw" and 0 < channels <= 4 \
                and self.mean.size in (1, channels) and self.std.size in (1, channels):
            # A uint8 image has 256 values per channel: normalise those (the same float32
            # arithmetic, so the same bits) and look the pixels up, 5x faster than the array math.
            ramp = np.broadcast_to(np.arange(256, dtype=np.uint8)[:, None, None],
                                   (256, 1, channels))
            out = cv2.LUT(img, np.ascontiguousarray(self._normalize(ramp))).reshape(img.shape)
        else:
            out = self._normalize(img)
        return out.astype(np.float16) if self.output_fp16 else out


@TRANSFORMS.register()
class ToCHWImage:
    """HWC -> CHW."""

    def __call__(self, img, rng=None):
        return np.ascontiguousarray(img.transpose(2, 0, 1))


def create_operators(list_cfg, section="transform_ops"):
    """Build ops from PLSC's list form `[{Name: {kwargs} or None}, ...]`."""
    return [op for _, op in TRANSFORMS.build_list(list_cfg, section)]


def apply_operators(ops, img, rng):
    for op in ops:
        img = op(img, rng)
    return img
