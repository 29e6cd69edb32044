"""Engine features that a broken engine would silently ignore: fine-tuning from pretrained
weights (pos-embed interpolation, head re-init), step-wise evaluation, save_interval, recompute
and batch transforms (Mixup/Cutmix) inside the training loop.

References are independent of plsc: the official-layout -> our-layout mapping, the pos-embed
resizes (scipy zoom for the official bilinear, a numpy Keys cubic for bicubic) and Mixup/Cutmix
are written here. The engine is driven through tools/train.py and the files it writes, or, where
a patch must observe the loop, in-process through `_train_in_process` only.
"""
import os
import re

import numpy as np
import paddle
import pytest

import numpy_vit as nv
from tiny import run_tool, tiny_config

NAME = "VisionTransformer"


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return tmp_path_factory.mktemp("shapes")


def _train_in_process(path, *overrides):
    """The one place the engine is driven in-process (kept small: the engine's internals move)."""
    from plsc.config import get_config
    from plsc.engine import Engine
    Engine(get_config(path, list(overrides)), "train").train()


def _out(tmp_path):
    return tmp_path / "out" / NAME


def _params(tmp_path, prefix="latest"):
    return {k: np.asarray(v) for k, v in
            paddle.load(str(_out(tmp_path) / f"{prefix}.pdparams")).items()}


def _ok(r):
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]


# ----------------------------------------------------------------------------- fine-tuning
def official_to_ours(p, depth):
    """Our parameter names from a released-layout checkpoint (independent of plsc.convert)."""
    d = p["embedding/bias"].shape[0]
    s = {"patch_embed.proj.weight": p["embedding/kernel"].transpose(3, 2, 0, 1),
         "patch_embed.proj.bias": p["embedding/bias"], "cls_token": p["cls"],
         "pos_embed": p["Transformer/posembed_input/pos_embedding"],
         "norm.weight": p["Transformer/encoder_norm/scale"],
         "norm.bias": p["Transformer/encoder_norm/bias"],
         "head.weight": p["head/kernel"], "head.bias": p["head/bias"]}
    for i in range(depth):
        b, o = f"Transformer/encoderblock_{i}/", f"blocks.{i}."
        att = b + "MultiHeadDotProductAttention_1/"
        s[o + "attn.qkv.weight"] = np.concatenate(
            [p[att + n + "/kernel"].reshape(d, d) for n in ("query", "key", "value")], axis=1)
        s[o + "attn.qkv.bias"] = np.concatenate(
            [p[att + n + "/bias"].reshape(d) for n in ("query", "key", "value")])
        s[o + "attn.proj.weight"] = p[att + "out/kernel"].reshape(d, d)
        s[o + "attn.proj.bias"] = p[att + "out/bias"]
        for ln, ours in (("LayerNorm_0", "norm1"), ("LayerNorm_2", "norm2")):
            s[o + ours + ".weight"] = p[b + ln + "/scale"]
            s[o + ours + ".bias"] = p[b + ln + "/bias"]
        for j, fc in ((0, "fc1"), (1, "fc2")):
            s[o + f"mlp.{fc}.weight"] = p[b + f"MlpBlock_3/Dense_{j}/kernel"]
            s[o + f"mlp.{fc}.bias"] = p[b + f"MlpBlock_3/Dense_{j}/bias"]
    return s


def zoom_resize(grid, new):
    """The official ViT's resize: scipy.ndimage.zoom(order=1) on the (h, w, D) grid."""
    from scipy.ndimage import zoom
    h, w, _ = grid.shape
    return zoom(grid.astype(np.float64), (new / h, new / w, 1), order=1)


def cubic_resize(grid, new, a=-0.75):
    """F.interpolate(mode='bicubic', align_corners=False): Keys cubic convolution (a=-0.75),
    half-pixel centres, taps clamped at the borders; separable over h then w."""
    def kernel(t):
        t = np.abs(t)
        return np.where(t <= 1, (a + 2) * t ** 3 - (a + 3) * t ** 2 + 1,
                        np.where(t < 2, a * t ** 3 - 5 * a * t ** 2 + 8 * a * t - 4 * a, 0.0))

    def along(x, axis):
        n = x.shape[axis]
        src = (np.arange(new) + 0.5) * n / new - 0.5
        base = np.floor(src).astype(int)
        out = 0.0
        for k in (-1, 0, 1, 2):
            idx = np.clip(base + k, 0, n - 1)
            wk = kernel(src - (base + k))
            shape = [1] * x.ndim
            shape[axis] = new
            out = out + np.take(x, idx, axis=axis) * wk.reshape(shape)
        return out

    return along(along(grid.astype(np.float64), 0), 1)


@pytest.mark.parametrize("source,interp", [("npz", "bilinear"), ("npz", "bicubic"),
                                           ("pdparams", "bicubic")])
def test_finetune_through_train_tool_resizes_pos_embed_and_reinits_head(tmp_path, data_root,
                                                                         source, interp):
    # A released-layout checkpoint at 12 px (3x3 grid, 10 classes), fine-tuned at 16 px (4x4)
    # with 4 classes. max_train_step 1 under linear warmup from 0: the one update has lr 0, so
    # latest.pdparams holds exactly what pretrained loading put into the model.
    p = nv.random_official(hidden=32, depth=2, heads=2, mlp=128, patch=4, img=12, classes=10,
                           seed=21)
    src = official_to_ours(p, depth=2)
    if source == "npz":
        weights = str(tmp_path / "src.npz")
        np.savez(weights, **p)
    else:
        weights = str(tmp_path / "src.pdparams")
        paddle.save({k: paddle.to_tensor(np.ascontiguousarray(v)) for k, v in src.items()},
                    weights)
    path = tiny_config(tmp_path, data_root, **{
        "Global.max_train_step": 1, "Global.eval_during_train": False,
        "Model.head_bias": -3.0, "Model.drop_rate": 0.0})
    r = run_tool("train", ["-c", path, "-o", f"Global.pretrained_model={weights}",
                           "Global.finetune=True", f"Global.pos_embed_interp={interp}"])
    _ok(r)
    log = open(_out(tmp_path) / "train.log").read()
    assert re.search(r"\[Iter: 1/8\]lr: 0,", log), "the single update must have lr 0"
    got = _params(tmp_path)
    assert set(got) == set(src)

    pe = got["pos_embed"]
    assert pe.shape == (1, 1 + 16, 32)
    np.testing.assert_array_equal(pe[0, 0], src["pos_embed"][0, 0])  # class-token row kept
    grid = src["pos_embed"][0, 1:].reshape(3, 3, 32)
    ref = (zoom_resize if interp == "bilinear" else cubic_resize)(grid, 4).reshape(16, 32)
    other = (cubic_resize if interp == "bilinear" else zoom_resize)(grid, 4).reshape(16, 32)
    # bilinear is computed in float64 (float32 rounding only); bicubic by Paddle in float32
    # (measured: bilinear 1.5e-8, bicubic 6e-8 on these ~0.2-sized values)
    tol = 3e-8 if interp == "bilinear" else 1.5e-7
    assert np.abs(pe[0, 1:] - ref).max() <= tol, np.abs(pe[0, 1:] - ref).max()
    assert np.abs(pe[0, 1:] - other).max() > 1e-2  # the two methods really differ here

    np.testing.assert_array_equal(got["head.weight"], np.zeros((32, 4), np.float32))
    np.testing.assert_array_equal(got["head.bias"], np.full((4,), -3.0, np.float32))
    for k in sorted(set(src) - {"pos_embed", "head.weight", "head.bias"}):
        np.testing.assert_array_equal(got[k], src[k], err_msg=k)
