"""Host syncs of a training step: one device-to-host read per optimizer step, more only at the
steps that print a [Train] line.

Every python path by which a tensor's values reach the host (Tensor.numpy, item, float(), int(),
bool(), index, tolist, np.asarray, formatting, repr, cpu()) is wrapped to count calls; nested
calls (float() calls numpy() inside) count once. The count covers everything a step runs: the
data pipeline, forward, loss, metrics, backward, clip, skip decision, optimizer, EMA, logging.
"""
import contextlib

import numpy as np
import paddle
import pytest

from plsc.config import get_config
from plsc.engine import build_trainer
from plsc.engine import loop
from tiny import tiny_config

READS = ("numpy", "item", "__float__", "__int__", "__bool__", "__index__", "tolist",
         "__array__", "__format__", "__repr__", "cpu")


@contextlib.contextmanager
def counting_host_reads(events):
    """Appends "read" to `events` for each outermost host read of a paddle Tensor."""
    depth = [0]
    saved = {name: paddle.Tensor.__dict__[name] for name in READS}

    def counted(original):
        def read(self, *args, **kwargs):
            if depth[0] == 0:
                events.append("read")
            depth[0] += 1
            try:
                return original(self, *args, **kwargs)
            finally:
                depth[0] -= 1
        return read

    for name, original in saved.items():
        setattr(paddle.Tensor, name, counted(original))
    try:
        yield
    finally:
        for name, original in saved.items():
            setattr(paddle.Tensor, name, original)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return tmp_path_factory.mktemp("shapes")


def trace_steps(tmp_path, data_root, steps, **overrides):
    """Runs `steps` optimizer steps of the tiny training; returns the event list: "read" for
    each host read, "step" after each optimizer step, "print" before each [Train] line."""
    path = tiny_config(tmp_path, data_root, **{"Global.max_train_step": steps,
                                               "Global.eval_during_train": False, **overrides})
    t = build_trainer(get_config(path))
    events = []
    step, log_step = t.optim._step, loop._log_step

    def traced_step(*args):
        result = step(*args)
        events.append("step")
        return result

    def traced_log(*args):
        events.append("print")
        return log_step(*args)

    t.optim._step = traced_step
    patch = pytest.MonkeyPatch()
    patch.setattr(loop, "_log_step", traced_log)
    try:
        with counting_host_reads(events):
            assert loop.run_epoch(t)  # True: stopped at Global.max_train_step
    finally:
        patch.undo()
    assert t.state.global_step == steps
    return events


def reads_per_step(events):
    """[host reads between consecutive optimizer steps], print lines counted apart."""
    per_step, reads = [], 0
    for e in events:
        if e == "read":
            reads += 1
        elif e == "step":
            per_step.append(reads)
            reads = 0
    return per_step, reads


ADAMW = {"name": "AdamW", "weight_decay": 0.05, "layer_decay": 0.75,
         "grad_clip": {"name": "ClipGradByGlobalNorm", "clip_norm": 0.5}}


def test_one_host_read_per_optimizer_step(tmp_path, data_root):
    """accum 2 (two micro-batches per step), clipping, AdamW, EMA, train metrics; no print."""
    events = trace_steps(tmp_path, data_root, 5, **{
        "Global.accum_steps": 2, "Global.print_batch_step": 1000, "Optimizer": ADAMW,
        "EMA.decay": 0.9})
    assert "print" not in events
    per_step, after = reads_per_step(events)
    assert per_step == [1] * 5 and after == 0


def test_a_print_step_adds_one_read(tmp_path, data_root):
    events = trace_steps(tmp_path, data_root, 5, **{"Global.print_batch_step": 2})
    per_step, after = reads_per_step(events)
    # the read of step k happens before its print: steps 2 and 4 print, so the reads counted
    # towards steps 3 and 5 include the print's one read (loss and every metric at once)
    assert events.count("print") == 2
    assert per_step == [1, 1, 2, 1, 2] and after == 0


def test_the_counter_sees_each_way_to_the_host():
    """The instrumentation itself: each read path counts once (float() calls numpy inside)."""
    x = paddle.to_tensor(2.5, dtype="float32")
    for read in (lambda: float(x), lambda: x.item(), lambda: x.numpy(), lambda: bool(x > 0),
                 lambda: int(x), lambda: x.tolist(), lambda: np.asarray(x), lambda: f"{x:.2f}",
                 lambda: x.cpu()):
        events = []
        with counting_host_reads(events):
            read()
        assert events == ["read"], read


@pytest.fixture
def fp16_scaler(monkeypatch):
    """Paddle's GradScaler as it runs under fp16 AMP on a GPU, made here on CPU: Paddle turns
    it off unless the place is a GPU and the AMP dtype float16, so both are shown to it."""
    import types

    import paddle.amp.grad_scaler as grad_scaler

    gpu = types.SimpleNamespace(is_gpu_place=lambda: True, is_xpu_place=lambda: False,
                                is_custom_place=lambda: False)
    with monkeypatch.context() as m:
        m.setattr(grad_scaler, "_dygraph_tracer",
                  lambda: types.SimpleNamespace(_expected_place=gpu))
        scaler = paddle.amp.GradScaler(init_loss_scaling=1024.0, decr_every_n_nan_or_inf=1,
                                       incr_every_n_steps=1000)
    monkeypatch.setattr(grad_scaler.amp_global_state(), "amp_dtype", "float16")
    return scaler


def test_fp16_one_read_per_step_and_an_overflow_lowers_the_scale(fp16_scaler):
    """An ok step reads once; an inf/nan step changes no weight or optimizer state, halves the
    scale (decr_every_n_nan_or_inf 1) and steps the schedule; training then goes on."""
    from plsc.engine.amp import Amp, loss_scale
    from test_optim_wrapper import make, same, snapshot, step

    model, dp, wrapper = make()
    wrapper.precision = Amp(scaler=fp16_scaler)
    x = paddle.to_tensor(np.random.default_rng(0).standard_normal((5, 4)).astype("float32"))
    events = []
    with counting_host_reads(events):
        assert step(dp, wrapper, x).status == "ok"
    assert events == ["read"] and loss_scale(fp16_scaler) == 1024.0
    w0, o0, lr0 = snapshot(model, wrapper)
    hook = model.weight.register_hook(lambda g: g * float("nan"))
    result = step(dp, wrapper, x)
    hook.remove()
    w1, o1, lr1 = snapshot(model, wrapper)
    assert (result.status, result.scale, result.new_scale) == ("overflow", 1024.0, 512.0)
    assert same(w0, w1) and same(o0, o1) and lr1 > lr0  # warmup: the schedule stepped
    assert loss_scale(fp16_scaler) == 512.0
    assert step(dp, wrapper, x).status == "ok" and not same(w0, snapshot(model, wrapper)[0])
