"""TimmAutoAugment: RandAugment and AutoAugment from timm-style config strings (PLSC's DeiT recipe).

    TimmAutoAugment: {config_str: rand-m9-mstd0.5-inc1, interpolation: bicubic, img_size: 224,
                      mean: [0.485, 0.456, 0.406]}

Config strings are dash-separated sections, each a key and its number:

- `rand-...` RandAugment: `m` magnitude (integer, 0..10, default 10; up to `mmax` when given),
  `n` ops per image (default 2, drawn with replacement), `mstd` magnitude noise (std of a normal
  around m per op call; above 100 means uniform in [0, m]), `mmax` upper clip of the noisy
  magnitude (default 10), `inc1` the increasing-severity op set, `w0` timm's weighted choice
  (then without replacement). Each chosen op applies with probability 1/2.
- `original`, `originalr`, `v0`, `v0r` AutoAugment policies (one of 25 sub-policies of two
  ops each per image, with the op's own probability and magnitude), optionally `-mstd<x>`.

As in timm: magnitudes run 0..10 (`_LEVEL_DENOM`), signed ops (rotate, shear, translate,
increasing enhancements) flip sign with probability 1/2, geometric ops fill with `mean` scaled to
0..255 (rounded) and translate by a fraction (0.45 at m 10) of the image side (`TranslateX/Y`,
absolute, by `int(0.45 * min(img_size))` pixels at m 10), `interpolation: random` draws bilinear
or bicubic per geometric op. Deliberate differences from timm: a section it skips or asserts on
(`rand-m9-foo3`, a bare `mmax`, `m11`) is a config error here; `inc0` turns the increasing set
off (timm's `bool("0")` turns it on). All randomness comes from the per-sample `rng`.
The ops themselves (and their few pixel differences from Pillow) are in augment_ops.py.
"""
import math
import re
from typing import Annotated, Literal, NamedTuple, Optional, Tuple, Union

import numpy as np

from ..config import between, ge
from ..errors import DataError
from ..registry import TRANSFORMS
from . import augment_ops as ops

MAX_LEVEL = 10  # timm's _LEVEL_DENOM: magnitude m maps to the op's full range at 10


def _negate(value, rng):
    return -value if rng.random() > 0.5 else value


def _enhance(m, rng, hp):  # factor in [0.1, 1.9]
    return m / MAX_LEVEL * 1.8 + 0.1


def _enhance_increasing(m, rng, hp):  # 1 -/+ up to 0.9: stronger away from 1 as m grows
    return max(0.1, 1.0 + _negate(m / MAX_LEVEL * 0.9, rng))


def _posterize(m, rng, hp):  # bits kept, 0..4
    return int(m / MAX_LEVEL * 4)


def _solarize(m, rng, hp):  # threshold 0..256
    return int(m / MAX_LEVEL * 256)


# name -> (op, magnitude -> argument); None: the op takes no argument.
OPS = {
    "AutoContrast": (ops.auto_contrast, None),
    "Equalize": (ops.equalize, None),
    "Invert": (ops.invert, None),
    "Rotate": (ops.rotate, lambda m, rng, hp: _negate(m / MAX_LEVEL * 30.0, rng)),
    "Posterize": (ops.posterize, _posterize),
    "PosterizeIncreasing": (ops.posterize, lambda m, rng, hp: 4 - _posterize(m, rng, hp)),
    "PosterizeOriginal": (ops.posterize, lambda m, rng, hp: _posterize(m, rng, hp) + 4),
    "Solarize": (ops.solarize, _solarize),
    "SolarizeIncreasing": (ops.solarize, lambda m, rng, hp: 256 - _solarize(m, rng, hp)),
    "SolarizeAdd": (ops.solarize_add, lambda m, rng, hp: int(m / MAX_LEVEL * 110)),
    "Color": (ops.color, _enhance),
    "ColorIncreasing": (ops.color, _enhance_increasing),
    "Contrast": (ops.contrast, _enhance),
    "ContrastIncreasing": (ops.contrast, _enhance_increasing),
    "Brightness": (ops.brightness, _enhance),
    "BrightnessIncreasing": (ops.brightness, _enhance_increasing),
    "Sharpness": (ops.sharpness, _enhance),
    "SharpnessIncreasing": (ops.sharpness, _enhance_increasing),
    "ShearX": (ops.shear_x, lambda m, rng, hp: _negate(m / MAX_LEVEL * 0.3, rng)),
    "ShearY": (ops.shear_y, lambda m, rng, hp: _negate(m / MAX_LEVEL * 0.3, rng)),
    "TranslateX": (ops.translate_x,
                   lambda m, rng, hp: _negate(m / MAX_LEVEL * hp["translate_const"], rng)),
    "TranslateY": (ops.translate_y,
                   lambda m, rng, hp: _negate(m / MAX_LEVEL * hp["translate_const"], rng)),
    "TranslateXRel": (ops.translate_x_rel, lambda m, rng, hp: _negate(m / MAX_LEVEL * 0.45, rng)),
    "TranslateYRel": (ops.translate_y_rel, lambda m, rng, hp: _negate(m / MAX_LEVEL * 0.45, rng)),
}

RAND_OPS = ["AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize",
            "SolarizeAdd", "Color", "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY",
            "TranslateXRel", "TranslateYRel"]
RAND_OPS_INCREASING = [
    {"Posterize": "PosterizeIncreasing", "Solarize": "SolarizeIncreasing",
     "Color": "ColorIncreasing", "Contrast": "ContrastIncreasing",
     "Brightness": "BrightnessIncreasing", "Sharpness": "SharpnessIncreasing"}.get(n, n)
    for n in RAND_OPS]
# timm's _RAND_CHOICE_WEIGHTS_0 (`w0`), in RAND_OPS order.
RAND_WEIGHTS_0 = [0.025, 0.005, 0, 0.3, 0, 0.005, 0.005, 0.025, 0.005, 0.005, 0.025, 0.2, 0.2,
                  0.1, 0.1]

# AutoAugment's ImageNet policies: (op, probability, magnitude) pairs. "P" is the policy's
# Posterize variant, the one thing that differs between original/originalr and v0/v0r.
_ORIGINAL = [
    [("P", 0.4, 8), ("Rotate", 0.6, 9)], [("Solarize", 0.6, 5), ("AutoContrast", 0.6, 5)],
    [("Equalize", 0.8, 8), ("Equalize", 0.6, 3)], [("P", 0.6, 7), ("P", 0.6, 6)],
    [("Equalize", 0.4, 7), ("Solarize", 0.2, 4)], [("Equalize", 0.4, 4), ("Rotate", 0.8, 8)],
    [("Solarize", 0.6, 3), ("Equalize", 0.6, 7)], [("P", 0.8, 5), ("Equalize", 1.0, 2)],
    [("Rotate", 0.2, 3), ("Solarize", 0.6, 8)], [("Equalize", 0.6, 8), ("P", 0.4, 6)],
    [("Rotate", 0.8, 8), ("Color", 0.4, 0)], [("Rotate", 0.4, 9), ("Equalize", 0.6, 2)],
    [("Equalize", 0.0, 7), ("Equalize", 0.8, 8)], [("Invert", 0.6, 4), ("Equalize", 1.0, 8)],
    [("Color", 0.6, 4), ("Contrast", 1.0, 8)], [("Rotate", 0.8, 8), ("Color", 1.0, 2)],
    [("Color", 0.8, 8), ("Solarize", 0.8, 7)], [("Sharpness", 0.4, 7), ("Invert", 0.6, 8)],
    [("ShearX", 0.6, 5), ("Equalize", 1.0, 9)], [("Color", 0.4, 0), ("Equalize", 0.6, 3)],
    [("Equalize", 0.4, 7), ("Solarize", 0.2, 4)], [("Solarize", 0.6, 5), ("AutoContrast", 0.6, 5)],
    [("Invert", 0.6, 4), ("Equalize", 1.0, 8)], [("Color", 0.6, 4), ("Contrast", 1.0, 8)],
    [("Equalize", 0.8, 8), ("Equalize", 0.6, 3)],
]
_V0 = [
    [("Equalize", 0.8, 1), ("ShearY", 0.8, 4)], [("Color", 0.4, 9), ("Equalize", 0.6, 3)],
    [("Color", 0.4, 1), ("Rotate", 0.6, 8)], [("Solarize", 0.8, 3), ("Equalize", 0.4, 7)],
    [("Solarize", 0.4, 2), ("Solarize", 0.6, 2)], [("Color", 0.2, 0), ("Equalize", 0.8, 8)],
    [("Equalize", 0.4, 8), ("SolarizeAdd", 0.8, 3)], [("ShearX", 0.2, 9), ("Rotate", 0.6, 8)],
    [("Color", 0.6, 1), ("Equalize", 1.0, 2)], [("Invert", 0.4, 9), ("Rotate", 0.6, 0)],
    [("Equalize", 1.0, 9), ("ShearY", 0.6, 3)], [("Color", 0.4, 7), ("Equalize", 0.6, 0)],
    [("P", 0.4, 6), ("AutoContrast", 0.4, 7)], [("Solarize", 0.6, 8), ("Color", 0.6, 9)],
    [("Solarize", 0.2, 4), ("Rotate", 0.8, 9)], [("Rotate", 1.0, 7), ("TranslateYRel", 0.8, 9)],
    [("ShearX", 0.0, 0), ("Solarize", 0.8, 4)], [("ShearY", 0.8, 0), ("Color", 0.6, 4)],
    [("Color", 1.0, 0), ("Rotate", 0.6, 2)], [("Equalize", 0.8, 4), ("Equalize", 0.0, 8)],
    [("Equalize", 1.0, 4), ("AutoContrast", 0.6, 2)], [("ShearY", 0.4, 7), ("SolarizeAdd", 0.6, 7)],
    [("P", 0.8, 2), ("Solarize", 0.6, 10)], [("Solarize", 0.6, 8), ("Equalize", 0.6, 1)],
    [("Color", 0.8, 6), ("Rotate", 0.4, 5)],
]
POLICIES = {"original": (_ORIGINAL, "PosterizeOriginal"),
            "originalr": (_ORIGINAL, "PosterizeIncreasing"),
            "v0": (_V0, "Posterize"), "v0r": (_V0, "PosterizeIncreasing")}


class AugmentSpec(NamedTuple):
    """A parsed config string. `policy` None = RandAugment."""
    policy: Optional[str] = None
    n: int = 2
    m: int = MAX_LEVEL
    mstd: float = 0.0  # inf = uniform in [0, m]
    mmax: Optional[int] = None
    increasing: bool = False
    weighted: bool = False


_SECTION = re.compile(r"([a-z]+)(\d+(?:\.\d*)?)?\Z")
_RAND_KEYS = {"m": int, "n": int, "mstd": float, "mmax": int, "inc": int, "w": int}
_EXAMPLES = {"m": "m9", "n": "n2", "mstd": "mstd0.5", "mmax": "mmax10", "inc": "inc1", "w": "w0"}


def parse_config(text):
    """Config string -> AugmentSpec; ValueError says what is wrong (one line)."""
    head, *sections = text.split("-")
    if head != "rand" and head not in POLICIES:
        raise ValueError(f"unknown augmentation '{head}' (expected rand or an AutoAugment policy: "
                         f"{', '.join(POLICIES)})")
    accepted = _RAND_KEYS if head == "rand" else {"mstd": float}
    values = {}
    for section in sections:
        match = _SECTION.match(section)
        key = match.group(1) if match else section
        if key not in accepted:
            raise ValueError(f"unknown section '{section}'; {head} takes "
                             f"{', '.join(_EXAMPLES[k] for k in accepted)} (key and number)")
        if match.group(2) is None:
            raise ValueError(f"section '{key}' needs a number, e.g. {_EXAMPLES[key]}")
        if key in values:
            raise ValueError(f"section '{key}' is given twice")
        if accepted[key] is int and "." in match.group(2):
            raise ValueError(f"section '{section}': {key} takes an integer")
        values[key] = accepted[key](match.group(2))
    return _spec(head, values)


def _spec(head, values):
    mstd = values.get("mstd", 0.0)
    spec = AugmentSpec(policy=None if head == "rand" else head, n=values.get("n", 2),
                       m=values.get("m", MAX_LEVEL), mstd=math.inf if mstd > 100 else mstd,
                       mmax=values.get("mmax"), increasing=values.get("inc", 0) > 0,
                       weighted="w" in values)
    top = MAX_LEVEL if spec.mmax is None else spec.mmax
    if spec.mmax is not None and spec.mmax < 1:
        raise ValueError(f"mmax{spec.mmax}: the magnitude bound must be >= 1")
    if spec.m > top:
        raise ValueError(f"magnitude m{spec.m} is out of range 0..{top}"
                         + ("" if spec.mmax else " (add mmax<N> to allow more)"))
    if values.get("w", 0) != 0:
        raise ValueError(f"w{values['w']}: the only weight set is w0")
    if spec.weighted and spec.n > sum(w > 0 for w in RAND_WEIGHTS_0):
        raise ValueError(f"n{spec.n}: w0 picks distinct ops, at most "
                         f"{sum(w > 0 for w in RAND_WEIGHTS_0)}")
    return spec


def _check_config(values):
    try:
        parse_config(values["config_str"])
    except ValueError as e:
        return f"config_str '{values['config_str']}': {e}"
    return None


Unit = Annotated[float, between(0, 1)]
Side = Annotated[int, ge(1)]


@TRANSFORMS.register(check=_check_config)
class TimmAutoAugment:
    """RandAugment / AutoAugment from a timm config string on an HWC uint8 RGB image."""

    def __init__(self, config_str: str = "rand-m9-mstd0.5-inc1",
                 interpolation: Literal["bilinear", "bicubic", "random"] = "random",
                 img_size: Union[Side, Tuple[Side, Side]] = 224,
                 mean: Tuple[Unit, Unit, Unit] = (0.485, 0.456, 0.406)):
        self.spec = parse_config(config_str)
        self.interpolation = interpolation
        self.fill = tuple(min(255, round(255 * x)) for x in mean)
        side = min(img_size) if isinstance(img_size, (list, tuple)) else img_size
        self.hparams = {"translate_const": int(side * 0.45)}
        if self.spec.policy is None:
            names = RAND_OPS_INCREASING if self.spec.increasing else RAND_OPS
            self.ops = [(name, 0.5, self.spec.m) for name in names]
        else:
            table, posterize = POLICIES[self.spec.policy]
            self.ops = [[(posterize if name == "P" else name, p, m) for name, p, m in sub]
                        for sub in table]

    def choose(self, rng):
        """The (name, probability, magnitude) ops to try on one image."""
        if self.spec.policy is not None:
            return self.ops[int(rng.integers(len(self.ops)))]
        if self.spec.weighted:
            p = np.array(RAND_WEIGHTS_0) / sum(RAND_WEIGHTS_0)
            picks = rng.choice(len(self.ops), self.spec.n, replace=False, p=p)
        else:
            picks = rng.integers(len(self.ops), size=self.spec.n)
        return [self.ops[i] for i in picks]

    def magnitude(self, m, rng):
        """m with the config's noise, clipped to [0, mmax or 10]."""
        if self.spec.mstd == math.inf:
            m = rng.uniform(0, m)
        elif self.spec.mstd > 0:
            m = rng.normal(m, self.spec.mstd)
        return max(0.0, min(m, self.spec.mmax or MAX_LEVEL))

    def apply(self, img, name, prob, m, rng):
        if prob < 1.0 and rng.random() > prob:
            return img
        op, level = OPS[name]
        m = self.magnitude(m, rng)
        arg = None if level is None else level(m, rng, self.hparams)
        interpolation = self.interpolation
        if op in ops.GEOMETRIC and interpolation == "random":
            interpolation = ("bilinear", "bicubic")[int(rng.integers(2))]
        return op(img, arg, self.fill, interpolation)

    def __call__(self, img, rng):
        if not (isinstance(img, np.ndarray) and img.dtype == np.uint8 and img.ndim == 3
                and img.shape[2] == 3):
            got = (f"{img.dtype} array of shape {img.shape}" if isinstance(img, np.ndarray)
                   else type(img).__name__)
            raise DataError(f"TimmAutoAugment expects an HWC uint8 RGB image (put it after "
                            f"DecodeImage and before NormalizeImage), got a {got}")
        for name, prob, m in self.choose(rng):
            img = self.apply(img, name, prob, m, rng)
        return img


__all__ = ["AugmentSpec", "MAX_LEVEL", "OPS", "POLICIES", "RAND_OPS", "RAND_OPS_INCREASING",
           "TimmAutoAugment", "parse_config"]
