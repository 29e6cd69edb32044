"""RandomErasing against a numpy re-derivation of PaddleClas's algorithm, box bounds, fill
statistics per mode, HWC/CHW layouts, probability, and one-line config errors."""
import math

import numpy as np
import pytest
from tiny import run_tool, tiny_config

from plsc.config import get_config
from plsc.data.random_erasing import RandomErasing
from plsc.errors import ConfigError, DataError

MARK = 50.0  # a const fill no normalised pixel has


def image(h=64, w=48, seed=1):
    return np.random.default_rng(seed).uniform(-2, 2, (h, w, 3)).astype(np.float32)


def reference(img, seed, epsilon, sl, sh, r1, attempt, log_aspect, mode, mean):
    """PaddleClas's RandomErasing, drawing from a Generator in the same order."""
    rng, img = np.random.default_rng(seed), img.copy()
    if rng.random() > epsilon:
        return img
    height, width = img.shape[:2]
    lo, hi = (math.log(r1), math.log(1 / r1)) if log_aspect else (r1, 1 / r1)
    for _ in range(attempt):
        target = rng.uniform(sl, sh) * height * width
        aspect = rng.uniform(lo, hi)
        aspect = math.exp(aspect) if log_aspect else aspect
        h, w = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if w < width and h < height:
            top, left = rng.integers(0, height - h + 1), rng.integers(0, width - w + 1)
            shape = {"const": None, "rand": (1, 1, 3), "pixel": (h, w, 3)}[mode]
            fill = (np.array(mean, np.float32) if shape is None
                    else rng.standard_normal(shape, dtype=np.float32))
            img[top:top + h, left:left + w] = fill
            return img
    return img


@pytest.mark.parametrize("mode", ["const", "rand", "pixel"])
@pytest.mark.parametrize("log_aspect", [False, True])
def test_matches_the_re_derivation(mode, log_aspect):
    args = dict(epsilon=0.7, sl=0.02, sh=0.9, r1=0.3, attempt=3, log_aspect=log_aspect,
                mode=mode, mean=[0.1, -0.2, 0.3])
    erase = RandomErasing(args["epsilon"], args["sl"], args["sh"], args["r1"], args["mean"],
                          args["attempt"], log_aspect, mode)
    changed = 0
    for seed in range(60):
        expected = reference(image(), seed, **args)
        np.testing.assert_array_equal(erase(image(), np.random.default_rng(seed)), expected)
        changed += not np.array_equal(expected, image())
    assert 20 < changed < 60  # erased and not-erased (probability or no box fitting) both seen


def _box(out, img):
    """(h, w) of the changed region, asserting it is one filled rectangle."""
    rows, cols = np.flatnonzero((out != img).any(axis=(1, 2))), np.flatnonzero(
        (out != img).any(axis=(0, 2)))
    if rows.size == 0:
        return None
    inside = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    assert np.all(out[inside] == MARK)
    outside = np.ones(out.shape[:2], bool)
    outside[inside] = False
    np.testing.assert_array_equal(out[outside], img[outside])
    return rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1


@pytest.mark.parametrize("log_aspect", [False, True])
def test_box_area_and_aspect_within_bounds(log_aspect):
    img = image(120, 100)
    erase = RandomErasing(1.0, 0.05, 0.3, 0.5, [MARK] * 3, 100, log_aspect, "const")
    aspects = []
    for seed in range(400):
        h, w = _box(erase(img.copy(), np.random.default_rng(seed)), img)
        assert h < 120 and w < 100
        # rounding each side moves the area by under (h + w) / 2 + 1/4 pixels
        slack = (h + w) / 2 + 0.25
        assert 0.05 * 12000 - slack <= h * w <= 0.3 * 12000 + slack
        assert (h + 0.5) / (w - 0.5) >= 0.5 and (h - 0.5) / (w + 0.5) <= 2  # h/w in [r1, 1/r1]
        aspects.append(h / w)
    # log-uniform in [1/2, 2] has median 1; uniform in [1/2, 2] has median 1.25
    assert np.median(aspects) == pytest.approx(1.0 if log_aspect else 1.25, abs=0.08)


@pytest.mark.parametrize("mode", ["rand", "pixel"])
def test_random_fills_are_standard_normal(mode):
    erase = RandomErasing(1.0, 0.2, 0.2, 1.0, attempt=1, mode=mode)
    values = []
    for seed in range(200):
        out = erase(np.full((40, 40, 3), MARK, np.float32), np.random.default_rng(seed))
        box = out[(out != MARK).all(axis=2)]
        assert len(box) == 18 * 18  # sqrt(0.2 * 1600) = 17.9 -> 18
        if mode == "rand":  # one value per channel
            assert np.all(box == box[0])
            values.append(box[0])
        else:
            assert len(np.unique(box)) > 0.99 * box.size  # float32 draws rarely collide
            values.extend(box[:: 37])
    values = np.concatenate(values)
    n = len(values)
    assert abs(values.mean()) < 4 / math.sqrt(n)
    assert values.std() == pytest.approx(1.0, abs=5 / math.sqrt(2 * n))


def test_probability_is_epsilon():
    erase = RandomErasing(0.25, 0.02, 0.3, 0.3, attempt=10, use_log_aspect=True, mode="pixel")
    img = image()
    n = 4000
    erased = sum(not np.array_equal(erase(img.copy(), np.random.default_rng(s)), img)
                 for s in range(n))
    assert erased / n == pytest.approx(0.25, abs=4 * math.sqrt(0.25 * 0.75 / n))


def test_chw_input_gets_the_same_box_as_hwc():
    erase = RandomErasing(1.0, 0.1, 0.4, 0.3, mode="pixel")
    for seed in range(20):
        hwc = erase(image(), np.random.default_rng(seed))
        chw = erase(np.ascontiguousarray(image().transpose(2, 0, 1)), np.random.default_rng(seed))
        np.testing.assert_array_equal(chw, hwc.transpose(2, 0, 1))


def test_input_is_never_written_and_integer_input_refused_for_noise():
    img = image()
    out = RandomErasing(1.0, mean=[MARK] * 3)(img, np.random.default_rng(0))
    assert (out == MARK).any() and not (img == MARK).any()  # a dataset's own array stays intact
    img.flags.writeable = False
    assert (RandomErasing(1.0, mean=[MARK] * 3)(img, np.random.default_rng(0)) == out).all()
    with pytest.raises(DataError, match="mode 'pixel' needs the float image of NormalizeImage"):
        RandomErasing(1.0, mode="pixel")(np.zeros((9, 9, 3), np.uint8), np.random.default_rng(0))


def _config(tmp_path, **erasing):
    ops = [{"DecodeImage": {"to_rgb": True}},
           {"NormalizeImage": {"scale": "1.0/255.0", "mean": [0.5] * 3, "std": [0.5] * 3}},
           {"RandomErasing": erasing}, {"ToCHWImage": None}]
    return tiny_config(tmp_path, tmp_path / "shapes",
                       **{"DataLoader.Train.dataset.transform_ops": ops})


def test_sl_above_sh_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match=r"RandomErasing: sl \(0.5\) must be <= sh \(0.4\)"):
        get_config(_config(tmp_path, sl=0.5))


def test_epsilon_out_of_range_exits_2_with_one_line(tmp_path):
    path = _config(tmp_path, EPSILON=1.5, sh="1.0/3.0")
    r = run_tool("train", ["-c", path])
    console = r.stdout + r.stderr
    assert r.returncode == 2, console
    assert [x for x in console.splitlines() if x.startswith("error:")] == [
        "error: DataLoader.Train.dataset.transform_ops.2.RandomErasing.EPSILON: expected float "
        f"in [0, 1], got float 1.5 (from {path})"]
    assert "Traceback" not in console
