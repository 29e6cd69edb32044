"""Weight EMA (EMA section, plsc/engine/ema.py) against independent references: a numpy EMA
over the weights recorded after each optimizer step of a real tiny training run (one step made
non-finite, so skipped), resume == uninterrupted (bitwise, EMA included), the [EMA] evaluation
== tools/eval.py on the .pdema file, and EMA runs train the very same weights as runs without.
"""
import os
import re

import numpy as np
import paddle
import pytest

from plsc.config import get_config
from plsc.engine import build_trainer, run
from plsc.engine import checkpoint as ckpt
from plsc.engine.optim_wrapper import OptimWrapper
from tiny import run_tool, tiny_config

NAME = "VisionTransformer"


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return tmp_path_factory.mktemp("shapes")


def train(path, *overrides):
    t = build_trainer(get_config(path, list(overrides)))
    summary = run(t)
    return t, summary


def load(out, prefix, ext):
    return {k: np.asarray(v) for k, v in paddle.load(str(out / f"{prefix}{ext}")).items()}


def log_text(out):
    return (out / "train.log").read_text()


def _record_steps(monkeypatch, nan_call):
    """Record (status, trainable weights) after every optimizer step, and the weights before
    the first one; the `nan_call`-th micro-batch loss is made NaN (its step must be skipped)."""
    record = {"init": None, "steps": [], "calls": 0}
    real = OptimWrapper.update

    def update(self, loss):
        record["calls"] += 1
        if record["init"] is None:
            record["init"] = {n: p.numpy().copy() for n, p in self.dp_model.named_parameters()}
        if record["calls"] == nan_call:
            loss = loss * float("nan")
        result = real(self, loss)
        if result is not None:
            record["steps"].append((result.status, {n: p.numpy().copy() for n, p in
                                                    self.dp_model.named_parameters()}))
        return result

    monkeypatch.setattr(OptimWrapper, "update", update)
    return record


def numpy_ema(init, steps, decay, thres_steps):
    """The EMA of the weights after the applied steps, in float64."""
    shadow = {k: v.astype(np.float64) for k, v in init.items()}
    n = 0
    for status, weights in steps:
        if status != "ok":
            continue
        d = min(decay, (1 + n) / (10 + n)) if thres_steps else decay
        shadow = {k: d * shadow[k] + (1 - d) * weights[k].astype(np.float64) for k in shadow}
        n += 1
    return shadow, n


@pytest.mark.parametrize("decay,thres_steps", [(0.9, True), (0.6, False)])
def test_ema_equals_numpy_ema_of_the_applied_steps(tmp_path, data_root, monkeypatch, decay,
                                                   thres_steps):
    # 32 images / batch 4 = 8 steps; the 4th step's loss is NaN: skipped, weights unchanged
    path = tiny_config(tmp_path, data_root, epochs=1,
                       **{"EMA.decay": decay, "EMA.thres_steps": thres_steps})
    record = _record_steps(monkeypatch, nan_call=4)
    t, _ = train(path)
    monkeypatch.undo()
    statuses = [s for s, _ in record["steps"]]
    assert statuses == ["ok"] * 3 + ["nonfinite"] + ["ok"] * 4
    out = tmp_path / "out" / NAME
    assert "update skipped" in log_text(out)
    ref, n = numpy_ema(record["init"], record["steps"], decay, thres_steps)
    saved = load(out, "latest", ".pdema")
    assert saved.keys() == load(out, "latest", ".pdparams").keys() == ref.keys()
    assert all(v.dtype == np.float32 for v in saved.values()), "the shadow is saved in fp32"
    for k in ref:  # float32 arithmetic against float64: rounding only
        np.testing.assert_allclose(saved[k], ref[k], rtol=1e-6, atol=1e-7, err_msg=k)
    assert ckpt.load_states(str(out / "latest"))["ema_updates"] == n == t.ema.updates == 7
    # the average is not the final weights (otherwise the comparison proves little)
    last = record["steps"][-1][1]
    assert max(float(np.abs(saved[k] - last[k]).max()) for k in last) > 1e-3


class _FakeO2Optimizer:
    """What the EMA reads of an O2 optimizer: fp32 master weights in state_dict()."""

    def __init__(self, masters):
        self.masters = masters

    def state_dict(self):
        return {"master_weights": self.masters}


def test_shadow_is_fp32_from_the_master_weights_under_fp16_params():
    from plsc.engine import ema as ema_lib

    paddle.seed(0)
    model = paddle.nn.Linear(4, 3)
    model.to(dtype="float16")
    cfg = {"decay": 0.5, "thres_steps": False}
    rng = np.random.default_rng(0)
    masters = {p.name: paddle.to_tensor(rng.standard_normal(p.shape).astype(np.float32))
               for p in model.parameters()}
    names = {p.name: n for n, p in model.named_parameters()}
    ema = ema_lib.build(cfg, model, _FakeO2Optimizer(masters))
    first = {names[k]: v.numpy() for k, v in masters.items()}
    for k, v in masters.items():  # the next step's master weights
        v.set_value(v.numpy() + np.float32(1e-3) * rng.standard_normal(v.shape).astype(np.float32))
    ema_lib.update(ema, model, _FakeO2Optimizer(masters))
    for name, arr in ema_lib.shadow_arrays(ema).items():
        assert ema.shadow[name].dtype == paddle.float32 and arr.dtype == np.float32
        second = masters[dict(model.named_parameters())[name].name].numpy()
        np.testing.assert_allclose(arr, 0.5 * first[name] + 0.5 * second, rtol=1e-6, atol=1e-7)
    # without master weights: the fp16 parameters cast to fp32
    plain = ema_lib.build(cfg, model, None)
    for name, p in model.named_parameters():
        assert plain.shadow[name].dtype == paddle.float32
        np.testing.assert_array_equal(plain.shadow[name].numpy(), p.numpy().astype(np.float32))


def test_resume_mid_epoch_restores_the_ema_bitwise(tmp_path, data_root):
    # stop at step 5 of 8 (mid-epoch 1), resume to the end of epoch 2: EMA, weights, update
    # count and every evaluation ([Avg] and [EMA]) as in the uninterrupted run
    ema = {"EMA.decay": 0.8, "Model.drop_rate": 0.1}
    full = tiny_config(tmp_path / "full", data_root, **ema)
    part = tiny_config(tmp_path / "part", data_root, **{**ema, "Global.max_train_step": 5})
    train(full)
    train(part)
    out_full, out_part = tmp_path / "full/out" / NAME, tmp_path / "part/out" / NAME
    assert ckpt.load_states(str(out_part / "latest"))["ema_updates"] == 5
    t_res, _ = train(part, f"Global.checkpoint={out_part / 'latest'}", "Global.max_train_step=null")
    assert t_res.global_step == 16
    for ext in (".pdema", ".pdparams"):
        a, b = load(out_full, "latest", ext), load(out_part, "latest", ext)
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=f"{ext} {k}")
    assert ckpt.load_states(str(out_part / "latest"))["ema_updates"] == 16

    def evals(out):
        return re.findall(r"\[Eval\]\[Epoch 2\]\[(?:Avg|EMA)\].*\(", log_text(out))
    assert len(evals(out_full)) == 2 and evals(out_full) == evals(out_part)


def test_ema_on_trains_the_same_weights_and_logs_both_evaluations(tmp_path, data_root):
    # the EMA evaluation swaps the EMA weights in and out: training must not notice
    _, plain = train(tiny_config(tmp_path / "plain", data_root))
    t, summary = train(tiny_config(tmp_path / "ema", data_root, **{"EMA.decay": 0.9}))
    a = load(tmp_path / "plain/out" / NAME, "latest", ".pdparams")
    b = load(tmp_path / "ema/out" / NAME, "latest", ".pdparams")
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    text = log_text(tmp_path / "ema/out" / NAME)
    avg = [float(v) for v in re.findall(r"\[Eval\]\[Epoch \d\]\[Avg\].*top1: ([\d.]+)", text)]
    ema = [float(v) for v in re.findall(r"\[Eval\]\[Epoch \d\]\[EMA\].*top1: ([\d.]+)", text)]
    assert len(avg) == len(ema) == 2
    # default EMA.best_model: raw -> best_model follows the [Avg] top1
    assert summary["best_top1"] == plain["best_top1"] == pytest.approx(max(avg), abs=5e-6)
    assert summary["final_ema_top1"] == pytest.approx(ema[-1], abs=5e-6)
    assert re.search(r"best \(raw weights, epoch \d\): top1 [\d.]+ -> \S+/best_model;", text)


def test_best_model_by_ema_from_eval_start_epoch_and_pdema_through_eval_tool(tmp_path,
                                                                           data_root):
    # a slow EMA (0.999 without warm-up) lags the weights: its best differs from theirs
    path = tiny_config(tmp_path, data_root, epochs=3, **{"EMA.decay": 0.999,
                                                        "EMA.thres_steps": False,
                                                        "EMA.best_model": "ema",
                                                        "EMA.eval_start_epoch": 2})
    r = run_tool("train", ["-c", path])
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    out = tmp_path / "out" / NAME
    text = log_text(out)
    ema = {int(e): float(v) for e, v in
           re.findall(r"\[Eval\]\[Epoch (\d)\]\[EMA\].*top1: ([\d.]+)", text)}
    assert sorted(ema) == [2, 3], "EMA weights are evaluated from EMA.eval_start_epoch on"
    avg = {int(e): float(v) for e, v in
           re.findall(r"\[Eval\]\[Epoch (\d)\]\[Avg\].*top1: ([\d.]+)", text)}
    assert sorted(avg) == [1, 2, 3]

    def first_best(top1):
        return max(top1, key=lambda e: (top1[e], -e))  # the first epoch reaching the maximum
    best_epoch = first_best(ema)
    assert (best_epoch, ema[best_epoch]) != (first_best(avg), max(avg.values()))
    m = re.search(r"best \(EMA weights, epoch (\d)\): top1 ([\d.]+) -> (\S+);", text)
    assert m and int(m.group(1)) == best_epoch and float(m.group(2)) == ema[best_epoch]
    assert m.group(3) == str(out / "best_model.pdema")
    assert f"[Eval][Epoch 3][best EMA top1: {ema[best_epoch]:.5f} (epoch {best_epoch})]" in text
    # the .pdema is a plain state dict: tools/eval.py loads it as Global.pretrained_model and
    # measures what the [EMA] line of that epoch said
    r = run_tool("eval", ["-c", path, "-o", f"Global.pretrained_model={out / 'best_model.pdema'}"])
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    line = re.search(rf"\[Eval\]\[Epoch {best_epoch}\]\[EMA\](.*) \(", text).group(1)
    assert f"eval: {line.replace(': ', '=')}" in r.stdout


def test_resume_without_pdema_starts_the_shadow_and_ema_off_drops_it(tmp_path, data_root):
    path = tiny_config(tmp_path, data_root, epochs=1)
    train(path)
    out = tmp_path / "out" / NAME
    assert not (out / "latest.pdema").exists()
    t, _ = train(path, f"Global.checkpoint={out / 'latest'}", "Global.epochs=2", "EMA.decay=0.999",
                 "EMA.thres_steps=false", "EMA.best_model=ema")
    assert "has no EMA weights (.pdema): the EMA starts from the resumed weights" in log_text(out)
    # best_model was chosen by the raw weights' top1 so far: the EMA's starts over
    assert "chose best_model by the raw weights, this run by the ema ones: the best top1 " \
        "starts over" in log_text(out)
    assert (t.best_epoch, t.best_top1) == (2, t.state.last_ema_top1)
    assert t.ema.updates == 8 and ckpt.load_states(str(out / "latest"))["ema_updates"] == 8
    assert (out / "latest.pdema").exists() and ckpt.torn_reason(str(out / "latest")) is None
    # EMA off again: the set is written without .pdema and the old one does not linger
    train(path, f"Global.checkpoint={out / 'latest'}", "Global.epochs=3")
    assert "holds EMA weights but EMA is off" in log_text(out)
    assert not (out / "latest.pdema").exists()


def test_a_listed_pdema_that_is_missing_makes_the_set_torn(tmp_path, data_root):
    path = tiny_config(tmp_path, data_root, epochs=1, **{"EMA.decay": 0.9})
    train(path)
    out = tmp_path / "out" / NAME
    os.remove(out / "latest.pdema")
    assert ckpt.torn_reason(str(out / "latest")) == \
        f"{out / 'latest.pdema'} not found (listed in {out / 'latest'}.pdstates)"


@pytest.mark.parametrize("override,message", [
    ("EMA.decay=1.5", "error: EMA.decay: expected float in (0, 1) or null, got float 1.5 "
                      "(from -o EMA.decay=1.5)"),
    ("EMA.best_model=ema", "error: EMA.best_model=ema needs EMA.ema_eval: true"),
])
def test_bad_ema_values_are_one_line_and_exit_2(tmp_path, data_root, override, message):
    path = tiny_config(tmp_path, data_root, **{"EMA.decay": 0.9, "EMA.ema_eval": False})
    r = run_tool("train", ["-c", path, "-o", override])
    assert r.returncode == 2, r.stdout[-2000:] + r.stderr[-2000:]
    lines = [ln for ln in r.stderr.splitlines() if ln.strip() and "ccache" not in ln
             and "warnings.warn" not in ln]
    assert len(lines) == 1 and lines[0].startswith(message), r.stderr
