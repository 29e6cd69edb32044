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
    from plsc.engine import train
    train(get_config(path, list(overrides)))


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


# ----------------------------------------------------------------------------- evaluation / saving
def test_eval_every_n_optimizer_steps_and_epoch_checkpoints_every_save_interval(tmp_path):
    # 16 images, batch 8 in accum 2 micro-batches of 4: 2 optimizer steps per epoch, 12 in 6 epochs. Evaluations
    # every 3 optimizer steps (3, 6, 9, 12: two of them mid-epoch); epoch_N every 2nd epoch,
    # of which the newest 2 are kept.
    path = tiny_config(tmp_path, tmp_path / "shapes", train_size=16, epochs=6, batch_size=8, **{
        "Global.accum_steps": 2, "Global.eval_unit": "step", "Global.eval_interval": 3,
        "Global.save_interval": 2, "Global.max_num_latest_checkpoint": 2})
    _ok(run_tool("train", ["-c", path]))
    out = _out(tmp_path)
    log = open(out / "train.log").read().splitlines()
    step, eval_steps, saved = 0, [], []
    for line in log:
        m = re.search(r"\[Train\]\[Epoch (\d+)/6\]\[Iter: (\d)/2\]", line)
        if m:
            step = (int(m.group(1)) - 1) * 2 + int(m.group(2))
        if re.search(r"\[Eval\]\[Epoch \d+\]\[Avg\]", line):
            eval_steps.append(step)
        m = re.search(r"saved .*/(epoch_\d+|best_model)$", line)
        if m:
            saved.append(m.group(1) if m.group(1) != "best_model" else f"best@{step}")
    assert eval_steps == [3, 6, 9, 12]
    assert [s for s in saved if s.startswith("epoch_")] == ["epoch_2", "epoch_4", "epoch_6"]
    names = set(os.listdir(out))
    assert {n.split(".")[0] for n in names if n.startswith("epoch_")} == {"epoch_4", "epoch_6"}
    # best_model is written by those evaluations only (the first one always improves on none)
    best = [s for s in saved if s.startswith("best@")]
    assert best[0] == "best@3" and set(best) <= {f"best@{s}" for s in eval_steps}
    assert "best_model.pdparams" in names


# ----------------------------------------------------------------------------- recompute
def test_recompute_runs_and_gives_the_same_weights_with_dropout(tmp_path, data_root, monkeypatch):
    from paddle.distributed.fleet import utils as fleet_utils
    real, calls = fleet_utils.recompute, []

    def counting(fn, *args, **kwargs):
        calls.append(type(fn).__name__)
        return real(fn, *args, **kwargs)

    monkeypatch.setattr(fleet_utils, "recompute", counting)
    extra = {"Global.max_train_step": 3, "Global.eval_during_train": False,
             "Model.drop_rate": 0.1, "Model.attn_drop_rate": 0.1, "Model.drop_path_rate": 0.1}
    plain = tiny_config(tmp_path / "plain", data_root, **extra)
    _train_in_process(plain)
    assert calls == []
    rc = tiny_config(tmp_path / "rc", data_root, **extra)
    _train_in_process(rc, "DistributedStrategy.recompute=True")
    assert len(calls) == 3 * 2  # every block of every step
    a, b = _params(tmp_path / "plain"), _params(tmp_path / "rc")
    assert max(float(np.abs(a[k] - b[k]).max()) for k in a) == 0.0
    # ...and the run really moved the weights, with dropout on (a different seed differs)
    _train_in_process(tiny_config(tmp_path / "seed", data_root, **extra), "Global.seed=8")
    c = _params(tmp_path / "seed")
    assert max(float(np.abs(a[k] - c[k]).max()) for k in a) > 1e-3


# ----------------------------------------------------------------------------- Mixup / Cutmix
def _observed_first_step(tmp_path, data_root, monkeypatch, batch_transform):
    """(images fed to the patch embedding, labels or log-probs the loss used, loss) of step 1."""
    seen = {}
    conv_forward = paddle.nn.Conv2D.forward
    log_softmax, cross_entropy = paddle.nn.functional.log_softmax, paddle.nn.functional.cross_entropy
    backward = paddle.Tensor.backward

    def conv(self, x):
        seen.setdefault("images", x.numpy().copy())
        return conv_forward(self, x)

    def logsm(x, *a, **k):
        out = log_softmax(x, *a, **k)
        seen.setdefault("logp", out.numpy().astype(np.float64))
        return out

    def ce(x, label, *a, **k):
        seen.setdefault("labels", label.numpy().copy())
        return cross_entropy(x, label, *a, **k)

    def bw(self, *a, **k):
        seen.setdefault("loss", float(self))
        return backward(self, *a, **k)

    monkeypatch.setattr(paddle.nn.Conv2D, "forward", conv)
    monkeypatch.setattr(paddle.nn.functional, "log_softmax", logsm)
    monkeypatch.setattr(paddle.nn.functional, "cross_entropy", ce)
    monkeypatch.setattr(paddle.Tensor, "backward", bw)
    # random weights with a non-zero head: a zero head gives uniform log-probs, and then every
    # soft target (summing to 1) has the same loss
    p = nv.random_official(hidden=32, depth=2, heads=2, mlp=128, patch=4, img=16, classes=4,
                           seed=5, scale=0.5)
    weights = str(tmp_path / "random.pdparams")
    paddle.save({k: paddle.to_tensor(np.ascontiguousarray(v))
                 for k, v in official_to_ours(p, depth=2).items()}, weights)
    extra = {"Global.max_train_step": 1, "Global.eval_during_train": False,
             "Global.pretrained_model": weights}
    if batch_transform:
        extra["DataLoader.Train.dataset.batch_transform_ops"] = [batch_transform]
    _train_in_process(tiny_config(tmp_path, data_root, **extra))
    monkeypatch.undo()
    return seen


def ref_mixup(x, y, rng, alpha):
    lam = rng.beta(alpha, alpha)
    perm = rng.permutation(len(x))
    return lam * x + (1 - lam) * x[perm], lam * y + (1 - lam) * y[perm], lam


def ref_cutmix(x, y, rng, alpha):
    lam = rng.beta(alpha, alpha)
    perm = rng.permutation(len(x))
    h, w = x.shape[-2:]
    bh, bw = int(h * np.sqrt(1 - lam)), int(w * np.sqrt(1 - lam))
    cy, cx = rng.integers(h), rng.integers(w)
    t, b = max(cy - bh // 2, 0), min(cy + bh // 2, h)
    left, right = max(cx - bw // 2, 0), min(cx + bw // 2, w)
    out = x.copy()
    out[..., t:b, left:right] = x[perm][..., t:b, left:right]
    area = max(b - t, 0) * max(right - left, 0)
    lam_box = 1 - area / (h * w)
    return out, lam_box * y + (1 - lam_box) * y[perm], lam_box


@pytest.mark.parametrize("op,alpha,ref", [("Mixup", 0.8, ref_mixup), ("Cutmix", 1.0, ref_cutmix)])
def test_batch_transform_is_what_the_loss_sees(tmp_path, data_root, monkeypatch, op, alpha, ref):
    raw = _observed_first_step(tmp_path / "raw", data_root, monkeypatch, None)
    mixed = _observed_first_step(tmp_path / "mix", data_root, monkeypatch, {op: {"alpha": alpha}})
    x = raw["images"].astype(np.float64)
    y = np.eye(4)[raw["labels"].reshape(-1)]
    # the engine's per-step generator: seed 7, epoch 0, micro-batch 0, rank 0
    want_x, want_y, lam = ref(x, y, np.random.default_rng([7, 0, 0, 0]), alpha)
    assert 0.05 < lam < 0.95 and np.abs(want_x - x).max() > 0.1  # a real mix
    tol = 2e-7 if op == "Mixup" else 0.0  # float32 blend (measured 7e-8) / copied pixels
    assert np.abs(mixed["images"] - want_x).max() <= tol, np.abs(mixed["images"] - want_x).max()
    # the loss used the mixed soft labels: recomputed from the log-probs it saw
    loss = -(want_y * mixed["logp"]).sum(-1).mean()
    # (measured relative error 6e-8; the unmixed labels' loss differs by 0.1-0.9)
    assert abs(mixed["loss"] - loss) <= 1.5e-7 * abs(loss), (mixed["loss"], loss)
