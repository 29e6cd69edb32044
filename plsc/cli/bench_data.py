"""`tools/benchmark.py data`: images/s of one loader worker running PLSC's DeiT training pipeline.

The plsc pipeline is the DeiT recipe's transform_ops, built from the config as training builds
them. Beside it runs a plain Pillow pipeline of the same steps (Pillow decode, RandomResizedCrop
as Image.resize(box=...), timm's RandAugment through Pillow's ops, numpy normalise and erase), so
the ratio is a like-for-like comparison measured on the same machine in the same run. Both start
from the JPEG bytes in memory (a worker's file read is the same for both and is left out), run in
one process and one thread (cv2.setNumThreads(0): OpenCV's own threads off; Pillow and these
numpy operations are single-threaded), and are interleaved over the rounds so that load drift on
a shared machine hits both alike. The JPEGs are generated (ImageNet-sized, 500x375, photo-like
smooth colour fields with edges and grain): nothing downloads.
"""
import io
import math
import os
import statistics
import tempfile
import time

import numpy as np

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
DEIT_TRAIN_OPS = [  # PLSC's DeiT_base_patch16_224_in1k_1n8c_dp_fp16o2.yaml (fractions typed)
    {"DecodeImage": {"to_rgb": True, "channel_first": False}},
    {"RandCropImage": {"size": 224, "interpolation": "bicubic", "backend": "pil"}},
    {"RandFlipImage": {"flip_code": 1}},
    {"TimmAutoAugment": {"config_str": "rand-m9-mstd0.5-inc1", "interpolation": "bicubic",
                         "img_size": 224, "mean": MEAN}},
    {"NormalizeImage": {"scale": 1.0 / 255.0, "mean": MEAN, "std": STD, "order": ""}},
    {"RandomErasing": {"EPSILON": 0.25, "sl": 0.02, "sh": 1.0 / 3.0, "r1": 0.3, "attempt": 10,
                       "use_log_aspect": True, "mode": "pixel"}},
    {"ToCHWImage": None},
]
PLSC_IMG_PER_GPU = 3583 / 8  # PLSC's published ViT-B/16 training throughput, 8 GPUs


def make_jpegs(directory, count, size=(500, 375), seed=0):
    """`count` photo-like JPEGs (quality 90) in `directory`; returns their paths."""
    import cv2

    rng = np.random.default_rng(seed)
    w, h = size
    paths = []
    for i in range(count):
        coarse = rng.uniform(0, 255, (4 + i % 5, 5 + i % 7, 3)).astype(np.float32)
        img = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
        for _ in range(6):  # a few objects with hard edges
            centre = (int(rng.integers(w)), int(rng.integers(h)))
            colour = [float(c) for c in rng.uniform(0, 255, 3)]
            cv2.circle(img, centre, int(rng.integers(10, 120)), colour, -1, cv2.LINE_AA)
        img = cv2.GaussianBlur(img, (0, 0), 1.2) + rng.normal(0, 6, (h, w, 3))
        path = os.path.join(directory, f"{i:04d}.jpg")
        cv2.imwrite(path, np.clip(img, 0, 255).astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, 90])
        paths.append(path)
    return paths


def plsc_steps():
    """[(name, op)] of the DeiT pipeline as training builds it (config validation included)."""
    from ..data import transforms  # importing plsc.data registers every transform

    return transforms.TRANSFORMS.build_list(DEIT_TRAIN_OPS,
                                            "DataLoader.Train.dataset.transform_ops")


def pillow_steps():
    """The same steps written with Pillow (and numpy after Pillow), as a timm/torchvision
    pipeline does them."""
    from PIL import Image

    from ..data.autoaugment import OPS, TimmAutoAugment
    from ..data.random_erasing import RandomErasing
    from ..data.transforms import RandCropImage

    crop = RandCropImage(224)  # the box only: drawing it costs microseconds in either pipeline
    augment = TimmAutoAugment("rand-m9-mstd0.5-inc1", "bicubic", 224, MEAN)
    erase = RandomErasing(0.25, 0.02, 1 / 3, 0.3, attempt=10, use_log_aspect=True, mode="pixel")
    mean, std = np.array(MEAN, np.float32), np.array(STD, np.float32)
    pil_ops = _pil_ops()

    def decode(data, rng):
        return Image.open(io.BytesIO(data)).convert("RGB")

    def resized_crop(img, rng):
        top, left, h, w = crop.crop_box(img.height, img.width, rng)
        return img.resize((224, 224), Image.BICUBIC, box=(left, top, left + w, top + h))

    def flip(img, rng):
        return img.transpose(Image.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else img

    def rand_augment(img, rng):
        for name, prob, m in augment.choose(rng):
            if rng.random() > prob:
                continue
            level, m = OPS[name][1], augment.magnitude(m, rng)  # drawn for every op, as timm
            arg = None if level is None else level(m, rng, augment.hparams)
            img = pil_ops[name](img, arg)
        return img

    def normalize(img, rng):
        return (np.asarray(img, np.float32) / 255.0 - mean) / std

    def to_chw(img, rng):
        return np.ascontiguousarray(img.transpose(2, 0, 1))

    return [("decode", decode), ("crop+resize", resized_crop), ("flip", flip),
            ("randaugment", rand_augment), ("normalize", normalize), ("erase", erase),
            ("to CHW", to_chw)]


def _pil_ops():
    """timm's RandAugment ops on Pillow images (the increasing set; fill/bicubic of the recipe)."""
    from PIL import Image, ImageEnhance, ImageOps

    fill = tuple(round(255 * x) for x in MEAN)

    def affine(matrix):
        return lambda img, a: img.transform(img.size, Image.AFFINE, matrix(img, a),
                                            resample=Image.BICUBIC, fillcolor=fill)

    def enhance(kind):
        return lambda img, f: getattr(ImageEnhance, kind)(img).enhance(f)

    return {
        "AutoContrast": lambda img, a: ImageOps.autocontrast(img),
        "Equalize": lambda img, a: ImageOps.equalize(img),
        "Invert": lambda img, a: ImageOps.invert(img),
        "Rotate": lambda img, a: img.rotate(a, resample=Image.BICUBIC, fillcolor=fill),
        "PosterizeIncreasing": lambda img, bits: (
            img if bits >= 8 else img.point(lambda v: v & ~(2 ** (8 - bits) - 1))),
        "SolarizeIncreasing": lambda img, t: ImageOps.solarize(img, t),
        "SolarizeAdd": lambda img, add: img.point(
            [min(255, i + add) if i < 128 else i for i in range(256)] * 3),
        "ColorIncreasing": enhance("Color"), "ContrastIncreasing": enhance("Contrast"),
        "BrightnessIncreasing": enhance("Brightness"), "SharpnessIncreasing": enhance("Sharpness"),
        "ShearX": affine(lambda img, a: (1, a, 0, 0, 1, 0)),
        "ShearY": affine(lambda img, a: (1, 0, 0, a, 1, 0)),
        "TranslateXRel": affine(lambda img, a: (1, 0, a * img.width, 0, 1, 0)),
        "TranslateYRel": affine(lambda img, a: (1, 0, 0, 0, 1, a * img.height)),
    }


def _run(steps, images, seconds):
    """One pass over `images`; adds each step's time to `seconds` and returns the total."""
    start = time.perf_counter()
    for i, data in enumerate(images):
        rng = np.random.default_rng(i)
        img = data
        for name, step in steps:
            t = time.perf_counter()
            img = step(img, rng)
            seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - t
        assert img.shape == (3, 224, 224)
    return time.perf_counter() - start


def bench_data(args):
    import cv2

    cv2.setNumThreads(0)
    with tempfile.TemporaryDirectory() as tmp:
        images = []
        for path in make_jpegs(tmp, args.images):
            with open(path, "rb") as f:
                images.append(f.read())
    pipelines = {"plsc": plsc_steps(), "pillow": pillow_steps()}
    rounds = {name: [] for name in pipelines}  # per round: (total, {step: seconds})
    for steps in pipelines.values():  # warm-up: first-call costs out of the measurement
        _run(steps, images[:2], {})
    for _ in range(args.rounds):
        for name, steps in pipelines.items():
            seconds = {}
            rounds[name].append((_run(steps, images, seconds), seconds))
    _report(args, len(images), rounds)


def _report(args, n, rounds):
    """Medians over the rounds: of the totals (images/s) and of each step (ms/image)."""
    ips = {name: n / statistics.median(t for t, _ in r) for name, r in rounds.items()}
    print(f"data: DeiT train pipeline, {n} JPEGs 500x375, {args.rounds} round(s), "
          f"1 process, 1 thread (cv2.setNumThreads(0)):")
    for name in ("plsc", "pillow"):
        steps = rounds[name][0][1]
        detail = ", ".join(
            f"{k} {1000 * statistics.median(s[k] for _, s in rounds[name]) / n:.2f}" for k in steps)
        print(f"  {name:<7}: {ips[name]:8.1f} images/s per worker  (ms/image: {detail})")
    print(f"  ratio  : x{ips['plsc'] / ips['pillow']:.2f} plsc vs pillow  (goal >= x1.5)")
    workers = math.ceil(PLSC_IMG_PER_GPU / ips["plsc"])
    print(f"  ViT-B/16 at PLSC's 3583 img/s on 8 GPUs ({PLSC_IMG_PER_GPU:.0f} img/s per GPU) "
          f"needs >= {workers} loader workers per GPU at this per-worker rate")


def _positive(text):
    import argparse

    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return int(text)


def add_parser(sub):
    d = sub.add_parser("data", help="images/s per loader worker of the DeiT training pipeline, "
                                    "plsc vs plain Pillow")
    d.add_argument("--images", type=_positive, default=64, help="generated 500x375 JPEGs")
    d.add_argument("--rounds", type=_positive, default=9)
    d.add_argument("--debug", action="store_true")
    return d
