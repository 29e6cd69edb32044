"""tools/visualize_attention.py: the saved map is the rollout of the model's own attention, the
PNG is the blend at the preprocessed size, bad inputs are skipped per file."""
import os
import shutil

import cv2
import numpy as np
import paddle
import pytest

from plsc import apis
from plsc.cli import visualize_attention as cli
from plsc.config import get_config
from plsc.data.synthetic import ensure_generated
from plsc.engine.checkpoint import fp32_state_dict
from plsc.models import build_model
from log_lines import PLSC_INFO
from tiny import tiny_config


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("vis")
    data = tmp / "shapes"
    cfg_path = tiny_config(tmp, data)
    ensure_generated(str(data), 4, 32, 13, 16, 0)
    paddle.seed(0)
    model = build_model(dict(get_config(cfg_path).Model))
    rng = np.random.default_rng(0)
    state = {k: v + 0.3 * rng.standard_normal(v.shape).astype(np.float32)
             for k, v in fp32_state_dict(model).items()}
    paddle.save(state, str(tmp / "w.pdparams"))
    images = sorted(str(p) for p in (data / "val").rglob("*.jpg"))
    return {"cfg": cfg_path, "ckpt": str(tmp / "w"), "images": images}


def run_cli(argv, capsys):
    try:
        code = cli.main(argv) or 0
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out.splitlines(), [line for line in err.splitlines()
                                    if not PLSC_INFO.match(line)]


def test_heatmap_overlay_blend():
    image = np.full((8, 8, 3), 100, np.uint8)
    flat = np.zeros((2, 2))
    blended = cli.heatmap_overlay(image, flat)
    # a constant map is all zeros after min-max scaling: JET(0) = dark blue (0, 0, 128) in RGB
    np.testing.assert_array_equal(blended[0, 0], [50, 50, 114])
    peak = flat.copy()
    peak[0, 0] = 1.0
    out = cli.heatmap_overlay(image, peak)
    assert out.shape == (8, 8, 3) and out.dtype == np.uint8
    assert out[0, 0, 0] > out[7, 7, 0]  # red where the map peaks


def test_visualize_writes_png_and_rollout(tiny, tmp_path, capsys):
    path = tiny["images"][0]
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"nope")
    out_dir = tmp_path / "vis"
    code, out, err = run_cli(["-c", tiny["cfg"], "-o", f"Global.pretrained_model={tiny['ckpt']}",
                              "-i", path, str(bad), "--out", str(out_dir)], capsys)
    assert code == 0
    stem = os.path.join(str(out_dir), os.path.splitext(os.path.basename(path))[0] + "_rollout")
    assert out == [f"{path}: {stem}.png, {stem}.npy (grid 4x4)"]
    assert err == [f"skipped {bad}: cannot decode image {bad} (not an image file?)"]

    saved = np.load(stem + ".npy")
    model = apis.init_model(tiny["cfg"], tiny["ckpt"], device="cpu")
    x = paddle.to_tensor(model.preprocess(path)[None])
    with paddle.no_grad():
        _, attns = model.model.forward_features(x, return_attn=True)
    expect = apis.attention_rollout(attns, 1)[0].reshape(4, 4)
    np.testing.assert_allclose(saved, expect, atol=1e-12)

    png = cv2.imread(stem + ".png")[:, :, ::-1]
    rgb = cv2.cvtColor(cv2.imread(path), cv2.COLOR_BGR2RGB)
    assert png.shape == (256, 256, 3)  # the 16 px input enlarged x16 for viewing
    np.testing.assert_array_equal(png, cli.heatmap_overlay(cli.view_image(rgb), expect))


def test_view_image_enlarges_by_a_whole_factor():
    img = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    big = cli.view_image(img, min_side=5)
    assert big.shape == (6, 9, 3)
    np.testing.assert_array_equal(big[::3, ::3], img)
    assert cli.view_image(np.zeros((300, 400, 3), np.uint8)).shape == (300, 400, 3)


def test_same_named_inputs_from_different_folders_do_not_overwrite(tiny, tmp_path, capsys):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        shutil.copy(tiny["images"][0], tmp_path / folder / "img.jpg")
    shutil.copy(tiny["images"][1], tmp_path / "a" / "img.png")
    out_dir = tmp_path / "vis"
    code, out, _ = run_cli(["-c", tiny["cfg"], "-o", f"Global.pretrained_model={tiny['ckpt']}",
                            "-i", str(tmp_path / "a"), str(tmp_path / "b"), "--out",
                            str(out_dir)], capsys)
    assert code == 0 and len(out) == 3
    written = sorted(str(p.relative_to(out_dir)) for p in out_dir.rglob("*.png"))
    assert written == ["a/img.jpg_rollout.png", "a/img.png_rollout.png", "b/img_rollout.png"]


def test_visualize_errors(tiny, tmp_path, capsys):
    code, _, err = run_cli(["-c", tiny["cfg"], "-i", tiny["images"][0]], capsys)
    assert code == 2 and err == ["error: visualisation needs trained weights: set "
                                 "-o Global.pretrained_model=PREFIX"]
    code, _, err = run_cli(["-c", tiny["cfg"], "-o", f"Global.pretrained_model={tiny['ckpt']}",
                            "-i", str(tmp_path / "none.jpg"), "--out", str(tmp_path)], capsys)
    assert code == 2 and err[-1] == "error: no image could be processed"
    code, _, err = run_cli(["-c", tiny["cfg"], "-o", f"Global.pretrained_model={tiny['ckpt']}",
                            "-i", tiny["images"][0], "--discard-ratio", "1.5"], capsys)
    assert code == 2 and err == ["error: --discard-ratio must be in [0, 1), got 1.5"]
