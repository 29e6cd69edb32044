"""SyntheticShapes: a deterministic, generated image-classification dataset for quick starts,
tests and CPU demos (no download).

Each class is a shape or texture (circle, square, triangle, cross, stripes, ring, ...) drawn at a
random position, scale, rotation and colour on a noisy gradient background, sometimes with small
distractor dots. The dataset is written once to `root` as JPEG files with ImageNet-style list
files (`train_list.txt`, `val_list.txt`, `labels.txt`, `meta.json`) and then read exactly like
ImageNetDataset, so the real decode path runs.

Generation is safe when several processes start at once: each writes into a private temporary
directory and renames it to `root` (atomic); a process that loses the race discards its copy.

Pre-generate with `python -m plsc.data.synthetic ROOT [--num-train N ...]`. The registered
dataset class lives in datasets.py (importing this module from the package would make
`python -m` run it twice); this module holds the generator and the CLI.
"""
import argparse
import json
import logging
import math
import os
import shutil
import sys
import tempfile
import time

import cv2
import numpy as np

from ..errors import ConfigError, DataError

logger = logging.getLogger("plsc")

GENERATOR_VERSION = 2  # bump when the images change, so stale directories are detected
SHAPES = ["circle", "square", "triangle", "cross", "stripes", "ring",
          "frame", "hexagram", "checker", "half_disc"]
SPLITS = {"train": 1, "val": 2}  # split -> stream id for the per-image seeds
LUMA = np.array([0.299, 0.587, 0.114])  # Rec. 601 luminance weights
SUPERSAMPLE = 4  # draw at 4x and area-average: antialiased edges, thin textures survive


def _triangle(u, v, radius, offset=0.0):
    """Equilateral triangle of circumradius `radius`: inside all three edge half-planes."""
    inside = np.ones(u.shape, bool)
    for k in range(3):
        a = offset + math.pi / 2 + 2 * math.pi * k / 3 + math.pi / 3
        inside &= u * math.cos(a) + v * math.sin(a) <= radius / 2
    return inside


def shape_mask(kind, u, v, r):
    """Boolean mask of `kind` in rotated local coordinates (u, v); r = half-size in pixels."""
    square = (np.abs(u) <= r * 0.85) & (np.abs(v) <= r * 0.85)
    if kind == "circle":
        return u * u + v * v <= r * r
    if kind == "square":
        return square
    if kind == "triangle":
        return _triangle(u, v, r * 1.2)
    if kind == "cross":
        t = r * 0.25
        return ((np.abs(u) <= t) & (np.abs(v) <= r)) | ((np.abs(v) <= t) & (np.abs(u) <= r))
    if kind == "stripes":
        return square & (np.floor(u * (1 / (r * 0.34))).astype(np.int32) & 1 == 0)
    if kind == "ring":
        d2 = u * u + v * v
        return (d2 <= r * r) & (d2 >= (0.55 * r) ** 2)
    if kind == "frame":
        inner = (np.abs(u) <= r * 0.45) & (np.abs(v) <= r * 0.45)
        return square & ~inner
    if kind == "hexagram":
        return _triangle(u, v, r * 1.1) | _triangle(u, v, r * 1.1, offset=np.pi / 3)
    if kind == "checker":
        p = r * 0.57
        return square & ((np.floor(u / p).astype(np.int32) + np.floor(v / p).astype(np.int32)) & 1 == 0)
    if kind == "half_disc":
        return (u * u + v * v <= r * r) & (u >= -0.25 * r)
    raise ValueError(kind)


def supersampled_grid(size):
    """Pixel-center coordinates (xs, ys) of the supersampled canvas."""
    S = size * SUPERSAMPLE
    ys, xs = np.mgrid[0:S, 0:S].astype(np.float32) + 0.5
    return xs, ys


def _downsample(mask, size):
    """Area-average a supersampled mask to [size, size, 1] coverage in [0, 1]."""
    # INTER_AREA with an integer factor is exactly the block mean, and much faster than numpy's.
    return cv2.resize(mask, (size, size), interpolation=cv2.INTER_AREA)[..., None]


def render(label, size, rng, grid=None):
    """One RGB uint8 image of class `label`; every random choice comes from `rng`.

    Masks are drawn on a supersampled grid and area-averaged (antialiasing); colours are then
    composed at the final size, which keeps generation at about a millisecond per image."""
    xs, ys = grid if grid is not None else supersampled_grid(size)
    S = size * SUPERSAMPLE
    # Background: a random colour with a linear gradient of random direction.
    bg = rng.uniform(0, 255, 3)
    grad_dir = rng.uniform(0, 2 * np.pi)
    lx, ly = (np.arange(size) + 0.5) / size - 0.5, (np.arange(size) + 0.5)[:, None] / size - 0.5
    grad = (lx * np.cos(grad_dir) + ly * np.sin(grad_dir))[..., None]
    img = bg + grad * rng.uniform(-80, 80, 3)
    # Foreground colour of any hue but clearly lighter or darker than the background: with a
    # luminance contrast > 90 a small ViT learns markedly faster than with a plain colour
    # distance, while colour, noise and distractors still make it a real task.
    while True:
        fg = rng.uniform(0, 255, 3)
        if abs(float((fg - bg) @ LUMA)) > 90:
            break
    # Python floats (not numpy float64 scalars) keep the supersampled maths in float32.
    r = float(rng.uniform(0.22, 0.42)) * S
    cx, cy = (float(t) for t in rng.uniform(r * 0.8, S - r * 0.8, 2))
    angle = float(rng.uniform(0, 2 * np.pi))
    c, s = math.cos(angle), math.sin(angle)
    u = (xs - cx) * c + (ys - cy) * s
    v = -(xs - cx) * s + (ys - cy) * c
    cover = _downsample(shape_mask(SHAPES[label], u, v, r).astype(np.float32), size)
    img = img * (1 - cover) + fg * cover
    # Distractors: a few small dots in random colours (smaller than any circle/ring class).
    for _ in range(int(rng.integers(0, 3))):
        dr = float(rng.uniform(0.04, 0.08)) * S
        dx, dy = (float(t) for t in rng.uniform(0, S, 2))
        dot = _downsample((((xs - dx) ** 2 + (ys - dy) ** 2) <= dr * dr).astype(np.float32), size)
        img = img * (1 - dot) + rng.uniform(0, 255, 3) * dot
    img = img + rng.normal(0, rng.uniform(3, 25), img.shape)  # sensor-like noise
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _params(class_num, num_train, num_val, image_size, seed):
    # On-disk record of the settings; its key names are a file format (existing roots compare
    # against them), so they stay as first written.
    return {"generator": "SyntheticShapes", "version": GENERATOR_VERSION,
            "num_classes": class_num, "num_train": num_train, "num_val": num_val,
            "image_size": image_size, "seed": seed}


def _check_params(class_num, num_train, num_val, image_size, seed):
    def positive_int(key, value, low=1):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ConfigError(f"SyntheticShapes.{key}: expected an int >= {low}, got {value!r}")

    if isinstance(class_num, bool) or not isinstance(class_num, int) or not 2 <= class_num <= len(SHAPES):
        raise ConfigError(f"SyntheticShapes.class_num: expected an int in [2, {len(SHAPES)}], "
                          f"got {class_num!r}")
    positive_int("num_train", num_train)
    positive_int("num_val", num_val)
    positive_int("image_size", image_size, low=8)
    positive_int("seed", seed, low=0)


def write_dataset(out_dir, class_num, num_train, num_val, image_size, seed):
    """Write every file of the dataset into the (existing, empty) directory `out_dir`."""
    names = SHAPES[:class_num]
    with open(os.path.join(out_dir, "labels.txt"), "w") as f:
        f.write("\n".join(names) + "\n")
    for split, count in (("train", num_train), ("val", num_val)):
        os.makedirs(os.path.join(out_dir, split))
        lines = []
        grid = supersampled_grid(image_size)
        for i in range(count):
            label = i % class_num  # exactly balanced (up to one image per class)
            rng = np.random.default_rng([seed, SPLITS[split], i])
            rgb = render(label, image_size, rng, grid)
            ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
                                   [cv2.IMWRITE_JPEG_QUALITY, 90])
            assert ok
            rel = f"{split}/{i:06d}.jpg"
            with open(os.path.join(out_dir, rel), "wb") as f:
                f.write(buf.tobytes())
            lines.append(f"{rel} {label}\n")
        with open(os.path.join(out_dir, f"{split}_list.txt"), "w") as f:
            f.writelines(lines)
    # meta.json last: a directory with it is complete.
    with open(os.path.join(out_dir, "meta.json"), "w") as f:
        json.dump(_params(class_num, num_train, num_val, image_size, seed), f, indent=1)


def _existing(root, wanted):
    """True if `root` holds this very dataset; False if root is absent or empty; else DataError."""
    if not os.path.isdir(root):
        if os.path.exists(root):
            raise DataError(f"SyntheticShapes root '{root}' exists and is not a directory")
        return False
    meta_path = os.path.join(root, "meta.json")
    if not os.path.isfile(meta_path):
        if os.listdir(root):
            raise DataError(f"SyntheticShapes root '{root}' is not empty and holds no meta.json; "
                            "use a new or empty directory")
        return False
    try:
        with open(meta_path) as f:
            have = json.load(f)
    except (OSError, ValueError) as e:
        raise DataError(f"{meta_path}: unreadable ({e})") from None
    if have != wanted:
        diff = ", ".join(f"{k}={have.get(k)!r} (wanted {v!r})" for k, v in wanted.items()
                         if have.get(k) != v)
        raise DataError(f"SyntheticShapes root '{root}' was generated with other settings: {diff}; "
                        "delete it or use another root")
    return True


def ensure_generated(root, class_num=6, num_train=3000, num_val=600, image_size=32, seed=0):
    """Generate the dataset at `root` unless it is already there; returns True if this call
    wrote it. Safe against concurrent callers (temp dir + atomic rename)."""
    _check_params(class_num, num_train, num_val, image_size, seed)
    wanted = _params(class_num, num_train, num_val, image_size, seed)
    given, root = root, os.path.abspath(root)
    if _existing(root, wanted):
        return False
    # Say so, and where: a relative root under another working directory is a new dataset.
    where = root if os.path.isabs(given) else f"{root} ('{given}' from {os.getcwd()})"
    logger.info("SyntheticShapes: generating %d train + %d val images (%d classes, %dpx) at %s",
                num_train, num_val, class_num, image_size, where)
    parent = os.path.dirname(root)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(root)}.tmp-", dir=parent)
    try:
        write_dataset(tmp, class_num, num_train, num_val, image_size, seed)
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; a dataset should be readable
        try:
            os.rename(tmp, root)  # atomic; replaces root only if it is an empty directory
            return True
        except OSError:
            # Another process renamed its copy first (root is now non-empty): use theirs.
            if _existing(root, wanted):
                return False
            raise
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m plsc.data.synthetic",
                                description="Pre-generate the SyntheticShapes dataset at ROOT.")
    p.add_argument("root")
    p.add_argument("--class-num", type=int, default=6)
    p.add_argument("--num-train", type=int, default=3000)
    p.add_argument("--num-val", type=int, default=600)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    start = time.time()
    try:
        wrote = ensure_generated(args.root, args.class_num, args.num_train, args.num_val,
                                 args.image_size, args.seed)
    except (ConfigError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    if wrote:
        print(f"wrote {args.num_train} train + {args.num_val} val images "
              f"({args.class_num} classes, {args.image_size}px) to {args.root} "
              f"in {time.time() - start:.1f}s")
    else:
        print(f"{args.root} already holds this dataset")
    return 0


if __name__ == "__main__":
    sys.exit(main())
