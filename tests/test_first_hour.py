"""What a new user does in the first hour, outside training: predict an ordinary photo with
every named config, convert the quick-start checkpoint, find the generated data, read the
attention maps."""
import glob
import logging
import os

import cv2
import numpy as np
import paddle
import pytest
import yaml

from plsc import apis
from plsc.config import get_config
from plsc.data.synthetic import ensure_generated
from plsc.flops import model_info
from plsc.models import build_model
from tiny import ROOT

QUICKSTART = os.path.join(ROOT, "configs", "quickstart",
                          "ViT_tiny_patch4_32_shapes_1n2c_dp_fp32.yaml")
NAMED = sorted(glob.glob(os.path.join(ROOT, "configs", "*.yaml"))) + [QUICKSTART]


def photo(tmp_path, width=300, height=200, name="photo.jpg"):
    rng = np.random.default_rng(width * height)
    img = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    path = str(tmp_path / name)
    assert cv2.imwrite(path, img)
    return path


@pytest.mark.parametrize("config", NAMED, ids=os.path.basename)
def test_every_named_config_preprocesses_an_ordinary_photo(config, tmp_path):
    cfg = get_config(config)
    size = model_info(dict(cfg.Model))["img_size"]
    pre = apis.Preprocess(apis.eval_transform_ops(cfg, size), (3, size, size))
    for w, h in ((300, 200), (200, 300)):
        assert pre(photo(tmp_path, w, h)).shape == (3, size, size)


def quickstart_overrides(root):
    """The quick-start config on a small copy of its dataset under `root` (32 px, 6 classes)."""
    out = []
    for split in ("Train", "Eval"):
        key = f"DataLoader.{split}.dataset"
        out += [f"{key}.root={root}", f"{key}.num_train=12", f"{key}.num_val=6"]
    return out


def test_quickstart_eval_resize_is_the_identity_on_its_own_data(tmp_path):
    """Adding resize + center crop must not change what the quick start evaluates."""
    root = str(tmp_path / "shapes")
    ensure_generated(root, 6, 12, 6, 32, 0)
    cfg = get_config(QUICKSTART, quickstart_overrides(root))
    ops = apis.eval_transform_ops(cfg, 32)
    assert [next(iter(op)) for op in ops][1:3] == ["ResizeImage", "CenterCropImage"]
    plain = [op for op in ops if next(iter(op)) not in ("ResizeImage", "CenterCropImage")]
    with_resize = apis.Preprocess(ops, (3, 32, 32))
    without = apis.Preprocess(plain, (3, 32, 32))
    for path in sorted(glob.glob(os.path.join(root, "val", "*.jpg"))):
        np.testing.assert_array_equal(with_resize(path), without(path))


def test_quickstart_model_predicts_a_300x200_jpeg(tmp_path):
    root = str(tmp_path / "shapes")
    cfg = get_config(QUICKSTART, quickstart_overrides(root))
    paddle.seed(0)
    prefix = str(tmp_path / "w")
    paddle.save(build_model(dict(cfg.Model)).state_dict(), prefix + ".pdparams")
    model = apis.init_model(cfg, prefix, device="cpu")
    result = apis.inference_model(model, photo(tmp_path))
    assert result["pred_class"] in model.class_names


def test_paddle2npz_reads_the_run_config_next_to_a_checkpoint(tmp_path, capsys):
    """A training run folder holds config.yaml; a width-32 model's heads are not guessable."""
    from plsc.cli import convert

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    model = {"name": "VisionTransformer", "img_size": 16, "patch_size": 4, "embed_dim": 32,
             "depth": 1, "num_heads": 4, "class_num": 3}
    (run_dir / "config.yaml").write_text(yaml.safe_dump({"Global": {"epochs": 1},
                                                         "Model": model}))
    paddle.seed(0)
    paddle.save(build_model(model).state_dict(), str(run_dir / "latest.pdparams"))
    convert.main(["paddle2npz", str(run_dir / "latest"), str(tmp_path / "w.npz")])
    out, err = capsys.readouterr()
    assert "heads=4" in out and f"model config: {run_dir / 'config.yaml'}" in err
    # the numerics warning names what differs from the official model (erf GELU), never the
    # epsilon, which is the official 1e-6 here
    warning = [line for line in (out + err).splitlines() if "official code runs" in line]
    assert len(warning) == 1 and "act=gelu" in warning[0] and "epsilon=" not in warning[0]
    assert convert.run_config(str(run_dir / "latest.pdparams")) == str(run_dir / "config.yaml")
    (run_dir / "latest.yaml").write_text(yaml.safe_dump({"Model": model}))
    assert convert.run_config(str(run_dir / "latest")) is None  # the converter's YAML first


def test_synthetic_data_says_where_it_is_generated(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("plsc")  # the tools' logger does not propagate: listen on it
    logger.addHandler(handler)
    monkeypatch.setattr(logger, "level", logging.INFO)
    try:
        assert ensure_generated("data/shapes", 2, 2, 2, 8, 0)
        assert not ensure_generated("data/shapes", 2, 2, 2, 8, 0)
    finally:
        logger.removeHandler(handler)
    lines = [r.getMessage() for r in records if "SyntheticShapes" in r.getMessage()]
    assert lines == [f"SyntheticShapes: generating 2 train + 2 val images (2 classes, 8px) at "
                     f"{tmp_path / 'data' / 'shapes'} ('data/shapes' from {tmp_path})"]
