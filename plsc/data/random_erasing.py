"""RandomErasing (Zhong et al., 2017) with PaddleClas/PLSC's keys and semantics.

    RandomErasing: {EPSILON: 0.25, sl: 0.02, sh: 1.0/3.0, r1: 0.3, attempt: 10,
                    use_log_aspect: True, mode: pixel}

With probability EPSILON, up to `attempt` times: draw an area fraction in [sl, sh] of the image
and an aspect ratio h/w in [r1, 1/r1] (uniform, or log-uniform with use_log_aspect); the first
box that fits strictly inside the image (h < height and w < width, as PaddleClas) is placed
uniformly and filled with `mean` (mode const), one standard-normal value per channel (rand) or
per element (pixel). The image is the float output of NormalizeImage, so N(0, 1) is noise at the
data's own scale. The erased image is a copy (PaddleClas writes into its input, which would
corrupt an in-memory dataset such as CIFAR when erasing comes before NormalizeImage).

Layout: HWC (after NormalizeImage, PLSC's order) unless the first axis holds 1, 3 or 4 channels
and the last does not, which is CHW (after ToCHWImage). A 3x3x3 image reads as HWC.
"""
import math
from typing import Annotated, List, Literal

import numpy as np

from ..config import between, ge, gt
from ..errors import DataError
from ..registry import TRANSFORMS

Unit = Annotated[float, between(0, 1)]
_CHANNELS = (1, 3, 4)


def _sl_le_sh(values):
    if values["sl"] > values["sh"]:
        return f"sl ({values['sl']:g}) must be <= sh ({values['sh']:g})"
    return None


def channel_axis(img):
    """0 for a CHW image, 2 for HWC (see the module docstring)."""
    if img.shape[0] in _CHANNELS and img.shape[2] not in _CHANNELS:
        return 0
    return 2


@TRANSFORMS.register(check=_sl_le_sh)
class RandomErasing:
    """Erase one random box of a normalised float image (see the module docstring)."""

    def __init__(self, EPSILON: Unit = 0.5, sl: Unit = 0.02, sh: Unit = 0.4,  # noqa: N803
                 r1: Annotated[float, gt(0)] = 0.3, mean: List[float] = (0.0, 0.0, 0.0),
                 attempt: Annotated[int, ge(1)] = 100, use_log_aspect: bool = False,
                 mode: Literal["const", "rand", "pixel"] = "const"):
        self.probability = EPSILON
        self.area = (sl, sh)
        self.aspect = (r1, 1 / r1)
        if use_log_aspect:
            self.aspect = (math.log(r1), math.log(1 / r1))
        self.use_log_aspect = use_log_aspect
        self.mean = np.asarray(mean, np.float32)
        self.attempt = attempt
        self.mode = mode

    def box(self, height, width, rng):
        """(top, left, h, w) of the box to erase, or None when no draw fits."""
        for _ in range(self.attempt):
            target = rng.uniform(*self.area) * height * width
            aspect = rng.uniform(*self.aspect)
            if self.use_log_aspect:
                aspect = math.exp(aspect)
            h = int(round(math.sqrt(target * aspect)))
            w = int(round(math.sqrt(target / aspect)))
            if w < width and h < height:
                top = int(rng.integers(0, height - h + 1))
                return top, int(rng.integers(0, width - w + 1)), h, w
        return None

    def fill(self, shape, rng):
        """Values for a box of HWC `shape`."""
        if self.mode == "pixel":
            return rng.standard_normal(shape, dtype=np.float32)
        if self.mode == "rand":
            return rng.standard_normal((1, 1, shape[2]), dtype=np.float32)
        if self.mean.size not in (1, shape[2]):
            raise DataError(f"RandomErasing: mean has {self.mean.size} values for an image "
                            f"with {shape[2]} channels")
        return self.mean

    def __call__(self, img, rng):
        if rng.random() > self.probability:
            return img
        if self.mode != "const" and not np.issubdtype(img.dtype, np.floating):
            raise DataError(f"RandomErasing mode '{self.mode}' needs the float image of "
                            f"NormalizeImage (put it after NormalizeImage), got {img.dtype}")
        height, width = hwc_view(img).shape[:2]
        found = self.box(height, width, rng)
        if found is None:
            return img
        # A copy, never the input: an in-memory dataset (CIFAR) hands out its own arrays.
        img = img.copy()
        view = hwc_view(img)
        top, left, h, w = found
        view[top:top + h, left:left + w] = self.fill((h, w, view.shape[2]), rng)
        return img


def hwc_view(img):
    """An HWC view of `img` (HW, HWC or CHW): writes to it reach `img`."""
    if img.ndim == 2:
        return img[:, :, None]
    return img.transpose(1, 2, 0) if channel_axis(img) == 0 else img
