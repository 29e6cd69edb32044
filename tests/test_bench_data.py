"""`tools/benchmark.py data`: the output format on a tiny setting (no timed asserts), the
generated JPEGs, and that the plsc and Pillow pipelines compute the same thing."""
import math
import re

import numpy as np
from PIL import Image
from tiny import run_tool

from plsc.cli.bench_data import make_jpegs, pillow_steps, plsc_steps


def _run(steps, data, seed):
    rng, out = np.random.default_rng(seed), data
    for _, step in steps:
        out = step(out, rng)
    return out


def test_generated_jpegs_are_imagenet_sized(tmp_path):
    paths = make_jpegs(str(tmp_path), 3)
    for path in paths:
        with Image.open(path) as im:
            assert im.format == "JPEG" and im.size == (500, 375) and im.mode == "RGB"
            assert np.asarray(im).std() > 20  # content, not a flat frame


def test_plsc_and_pillow_pipelines_are_the_same_steps(tmp_path):
    """Same rng -> same crop, flip, ops and erased box: the outputs differ only where the two
    resamplers do (resize(box=) vs crop-then-resize at the crop border, the bicubic kernel of
    the geometric ops), by about a grey level (1/255/0.225 = 0.017 after normalising)."""
    assert [name for name, _ in plsc_steps()] == [
        "DecodeImage", "RandCropImage", "RandFlipImage", "TimmAutoAugment", "NormalizeImage",
        "RandomErasing", "ToCHWImage"]
    plsc, pillow = plsc_steps(), pillow_steps()
    for seed, path in enumerate(make_jpegs(str(tmp_path), 16, seed=1)):
        with open(path, "rb") as f:
            data = f.read()
        a, b = _run(plsc, data, seed), _run(pillow, data, seed)
        assert a.shape == b.shape == (3, 224, 224) and a.dtype == b.dtype == np.float32
        assert np.abs(a - b).mean() < 0.02, seed


def test_data_section_prints_both_pipelines_ratio_and_workers():
    r = run_tool("benchmark", ["data", "--images", "3", "--rounds", "1"], timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.strip().splitlines()
    assert lines[0] == ("data: DeiT train pipeline, 3 JPEGs 500x375, 1 round(s), 1 process, "
                        "1 thread (cv2.setNumThreads(0)):")
    number = r"(\d+\.\d)"
    plsc = re.fullmatch(r"  plsc   : +" + number + r" images/s per worker  \(ms/image: "
                        r"DecodeImage [\d.]+, RandCropImage [\d.]+, RandFlipImage [\d.]+, "
                        r"TimmAutoAugment [\d.]+, NormalizeImage [\d.]+, RandomErasing [\d.]+, "
                        r"ToCHWImage [\d.]+\)", lines[1])
    pillow = re.fullmatch(r"  pillow : +" + number + r" images/s per worker  \(ms/image: "
                          r"decode [\d.]+, crop\+resize [\d.]+, flip [\d.]+, randaugment [\d.]+, "
                          r"normalize [\d.]+, erase [\d.]+, to CHW [\d.]+\)", lines[2])
    assert plsc and pillow, r.stdout
    ratio = re.fullmatch(r"  ratio  : x(\d+\.\d\d) plsc vs pillow  \(goal >= x1\.5\)", lines[3])
    assert ratio, r.stdout
    # printed rates are rounded to 0.1 img/s, the ratio to 0.01
    assert abs(float(ratio.group(1)) - float(plsc.group(1)) / float(pillow.group(1))) < 0.01
    workers = re.fullmatch(r"  ViT-B/16 at PLSC's 3583 img/s on 8 GPUs \(448 img/s per GPU\) "
                           r"needs >= (\d+) loader workers per GPU at this per-worker rate",
                           lines[4])
    assert workers, r.stdout
    # the figure follows from the printed rate (rounded to 0.1 img/s: allow the boundary)
    expected = {math.ceil(3583 / 8 / (float(plsc.group(1)) + d)) for d in (-0.05, 0.05)}
    assert int(workers.group(1)) in expected
    assert len(lines) == 5
