"""The image operations of AutoAugment / RandAugment on HWC uint8 RGB arrays.

Each op is `op(img, arg, fill, interpolation) -> img` (fill and interpolation matter to the
geometric ops only) and reproduces what timm's op does through Pillow:

- point ops (AutoContrast, Equalize, Invert, Posterize, Solarize, SolarizeAdd, Brightness,
  Contrast) are 256-entry lookup tables built with Pillow's arithmetic (ImageOps' integer
  histogram rules; ImageEnhance's float32 blend `d + f * (x - d)` truncated and clipped) and
  applied with cv2.LUT: pixel-exact to Pillow (Posterize to 0 bits, which Pillow >= 10 refuses,
  is black: its formula, and what timm gave on older Pillow);
- Color (Pillow's integer RGB -> L weights) and Sharpness (Pillow's SMOOTH kernel, border pixels
  kept) blend per pixel with the same float32 arithmetic: pixel-exact as well;
- the geometric ops (Rotate, ShearX/Y, TranslateX/Y[Rel]) use Pillow's affine coordinates
  (pixel centres at +0.5, the map from output to input, fill wherever the sample point leaves
  the image) through cv2.warpAffine, 3-4x faster than Image.transform. Bilinear agrees with
  Pillow within one grey level. Deliberate difference for bicubic: OpenCV's kernel has
  a = -0.75 where Pillow's Image.transform uses a = -1 (its resize uses -0.5), so at hard edges
  ours rings less (up to ~10 grey levels apart there, ~1 on average over a noisy image); the
  fill region is identical (tests/test_autoaugment.py holds the measured bounds).
"""
import math

import cv2
import numpy as np

CV2_INTERPOLATION = {"bilinear": cv2.INTER_LINEAR, "bicubic": cv2.INTER_CUBIC}
_IDENTITY = np.arange(256)
_SMOOTH = np.array([[1, 1, 1], [1, 5, 1], [1, 1, 1]], np.float32) / 13  # ImageFilter.SMOOTH


def _apply_lut(img, tables):
    """`tables`: one (256,) table for every channel, or (channels, 256)."""
    tables = np.clip(np.asarray(tables), 0, 255).astype(np.uint8)
    if tables.ndim == 2:
        tables = np.ascontiguousarray(tables.T).reshape(256, 1, -1)
    return cv2.LUT(img, tables)


def _histograms(img):
    """Per-channel 256-bin counts (cv2.calcHist: 8x np.bincount's speed; its float32 counts are
    exact below 2**24 pixels, beyond which numpy counts)."""
    if img.shape[0] * img.shape[1] >= 1 << 24:
        return [np.bincount(img[..., c].ravel(), minlength=256) for c in range(img.shape[2])]
    return [cv2.calcHist([img], [c], None, [256], [0, 256]).reshape(-1).astype(np.int64)
            for c in range(img.shape[2])]


def blend(degenerate, img, factor):
    """Pillow's Image.blend(degenerate, img, factor) on uint8 arrays: float32
    `d + factor * (x - d)`, clipped to 0..255 and truncated (ImagingBlend)."""
    d = np.asarray(degenerate).astype(np.float32)
    out = np.asarray(img).astype(np.float32)
    out -= d
    out *= np.float32(factor)
    out += d
    np.clip(out, 0, 255, out=out)
    return out.astype(np.uint8)


def auto_contrast(img, arg=None, fill=None, interpolation=None):
    tables = []
    for hist in _histograms(img):
        used = np.flatnonzero(hist)
        lo, hi = used[0], used[-1]
        if hi <= lo:
            tables.append(_IDENTITY)
        else:  # ImageOps.autocontrast: int(ix * scale + offset) in double precision
            scale = 255.0 / (hi - lo)
            tables.append(np.trunc(_IDENTITY * scale - lo * scale))
    return _apply_lut(img, tables)


def equalize(img, arg=None, fill=None, interpolation=None):
    tables = []
    for hist in _histograms(img):
        used = hist[hist > 0]
        step = (int(used.sum()) - int(used[-1])) // 255 if len(used) > 1 else 0
        if not step:
            tables.append(_IDENTITY)
        else:  # ImageOps.equalize: lut[i] = (step // 2 + sum(hist[:i])) // step
            before = np.concatenate([[0], np.cumsum(hist)[:-1]])
            tables.append((step // 2 + before) // step)
    return _apply_lut(img, tables)


def invert(img, arg=None, fill=None, interpolation=None):
    return 255 - img


def posterize(img, bits, fill=None, interpolation=None):
    if bits >= 8:
        return img
    return _apply_lut(img, _IDENTITY & ~(2 ** (8 - bits) - 1))


def solarize(img, threshold, fill=None, interpolation=None):
    return _apply_lut(img, np.where(_IDENTITY < threshold, _IDENTITY, 255 - _IDENTITY))


def solarize_add(img, add, fill=None, interpolation=None, threshold=128):
    return _apply_lut(img, np.where(_IDENTITY < threshold,
                                    np.minimum(255, _IDENTITY + add), _IDENTITY))


def luminance(img):
    """Pillow's RGB -> L: (R*19595 + G*38470 + B*7471 + 0x8000) >> 16, as (H, W, 1) uint8."""
    lum = img[..., 0].astype(np.int32) * 19595  # channel by channel: 8x faster than one cast
    lum += img[..., 1].astype(np.int32) * 38470
    lum += img[..., 2].astype(np.int32) * 7471 + 0x8000
    lum >>= 16
    return lum.astype(np.uint8)[..., None]


def color(img, factor, fill=None, interpolation=None):
    return blend(luminance(img), img, factor)


def contrast(img, factor, fill=None, interpolation=None):
    lum = luminance(img)
    mean = int(float(lum.mean(dtype=np.float64)) + 0.5)  # ImageStat mean of L, rounded
    return _apply_lut(img, blend(np.full(256, mean, np.uint8), _IDENTITY, factor))


def brightness(img, factor, fill=None, interpolation=None):
    return _apply_lut(img, blend(np.zeros(256, np.uint8), _IDENTITY, factor))


def sharpness(img, factor, fill=None, interpolation=None):
    smooth = img.copy()
    if img.shape[0] > 2 and img.shape[1] > 2:  # Pillow keeps the border pixels as they are
        smooth[1:-1, 1:-1] = cv2.filter2D(img, -1, _SMOOTH)[1:-1, 1:-1]
    return blend(smooth, img, factor)


def _coordinate(p, q, r, w, h):
    """p * (x + .5) + q * (y + .5) + r over the (h, w) output grid, broadcast from the terms
    that are not zero (a shear or translation needs one axis only)."""
    value = np.float64(r)
    if p:
        value = value + p * (np.arange(w) + 0.5)[None, :]
    if q:
        value = value + q * (np.arange(h) + 0.5)[:, None]
    return value


def affine(img, matrix, fill, interpolation):
    """Image.transform(size, AFFINE, matrix, resample, fillcolor): output pixel (x, y) samples
    the input at (a, b, c, d, e, f) applied to its centre (x + .5, y + .5); samples outside the
    image take `fill`, neighbours of a sample inside it clamp to the edge."""
    a, b, c, d, e, f = matrix
    h, w = img.shape[:2]
    # OpenCV puts pixel centres at integers: shift the map by half a pixel on both sides.
    m = np.array([[a, b, c + 0.5 * (a + b) - 0.5], [d, e, f + 0.5 * (d + e) - 0.5]])
    out = cv2.warpAffine(img, m, (w, h), flags=CV2_INTERPOLATION[interpolation]
                         | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REPLICATE)
    x_in, y_in = _coordinate(a, b, c, w, h), _coordinate(d, e, f, w, h)
    outside = (x_in < 0) | (x_in >= w) | (y_in < 0) | (y_in >= h)
    out[np.broadcast_to(outside, (h, w))] = fill
    return out


def rotate(img, degrees, fill, interpolation):
    """Image.rotate(degrees, resample, fillcolor=fill): counter-clockwise about the centre
    (multiples of 90 degrees are exact transposes, as in Pillow)."""
    degrees = degrees % 360.0
    h, w = img.shape[:2]
    if degrees == 0 or degrees == 180 or (degrees in (90, 270) and w == h):
        return np.ascontiguousarray(np.rot90(img, int(degrees) // 90))
    angle = -math.radians(degrees)
    cos, sin = round(math.cos(angle), 15), round(math.sin(angle), 15)
    cx, cy = w / 2, h / 2
    return affine(img, (cos, sin, cx - cos * cx - sin * cy, -sin, cos, cy + sin * cx - cos * cy),
                  fill, interpolation)


def shear_x(img, factor, fill, interpolation):
    return affine(img, (1, factor, 0, 0, 1, 0), fill, interpolation)


def shear_y(img, factor, fill, interpolation):
    return affine(img, (1, 0, 0, factor, 1, 0), fill, interpolation)


def translate_x(img, pixels, fill, interpolation):
    return affine(img, (1, 0, pixels, 0, 1, 0), fill, interpolation)


def translate_y(img, pixels, fill, interpolation):
    return affine(img, (1, 0, 0, 0, 1, pixels), fill, interpolation)


def translate_x_rel(img, fraction, fill, interpolation):
    return translate_x(img, fraction * img.shape[1], fill, interpolation)


def translate_y_rel(img, fraction, fill, interpolation):
    return translate_y(img, fraction * img.shape[0], fill, interpolation)


GEOMETRIC = {rotate, shear_x, shear_y, translate_x, translate_y, translate_x_rel,
             translate_y_rel}
