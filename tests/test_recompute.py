"""Recompute (DistributedStrategy.recompute): `true` and PLSC's {layerlist_interval, names}.

Reference: the same model without recompute. Recompute only changes what is kept for backward,
so gradients must be bitwise equal, with dropout, attention dropout and drop-path active (the
rerun must replay the forward's RNG state). Which blocks recompute is observed by counting the
calls of Paddle's recompute. The memory it saves is measured by `tools/benchmark.py memory`.
"""
import logging
from types import SimpleNamespace

import numpy as np
import paddle
import pytest

from plsc.config import get_config
from plsc.engine.build import build_model as engine_build_model
from plsc.errors import ConfigError
from plsc.models import build_model
from tiny import run_tool, tiny_config

MODEL = {"name": "VisionTransformer", "img_size": 16, "patch_size": 4, "embed_dim": 32,
         "depth": 4, "num_heads": 2, "class_num": 5,
         "drop_rate": 0.1, "attn_drop_rate": 0.1, "drop_path_rate": 0.3}


@pytest.fixture
def recompute_calls(monkeypatch):
    """The layers passed to Paddle's recompute, in call order."""
    import paddle.distributed.fleet.utils as fleet_utils

    calls, real = [], fleet_utils.recompute

    def counting(fn, *args, **kwargs):
        calls.append(fn)
        return real(fn, *args, **kwargs)

    monkeypatch.setattr(fleet_utils, "recompute", counting)
    return calls


def _grads(recompute=None, seed=1):
    """{param: grad} of one forward/backward in training mode; `recompute`: keywords of
    set_grad_checkpointing, or None for none."""
    paddle.seed(0)
    model = build_model(MODEL)
    with paddle.no_grad():  # the zero-initialised head would zero most gradients
        model.head.weight.set_value(paddle.randn(model.head.weight.shape) * 0.1)
    if recompute is not None:
        model.set_grad_checkpointing(True, **recompute)
    model.train()
    x = paddle.to_tensor(np.random.default_rng(0).standard_normal((4, 3, 16, 16), np.float32))
    paddle.seed(seed)  # the dropout / drop-path draws
    model(x).sum().backward()
    return model, {n: p.grad.numpy() for n, p in model.named_parameters()}


def _max_diff(a, b):
    return max(float(np.abs(a[k] - b[k]).max()) for k in a)


@pytest.mark.parametrize("recompute, blocks", [
    ({}, [0, 1, 2, 3]),                                 # `recompute: true`
    ({"interval": 2}, [0, 2]),                          # layerlist_interval: 2
    ({"interval": 3, "names": ["blocks.1"]}, [0, 1, 3]),
    ({"interval": 0, "names": ["blocks.2"]}, [2]),
])
def test_gradients_equal_without_recompute_with_dropout(recompute_calls, recompute, blocks):
    _, plain = _grads()
    assert recompute_calls == []
    model, rc = _grads(recompute)
    assert recompute_calls == [model.blocks[i] for i in blocks]
    assert _max_diff(plain, rc) == 0.0


def test_dropout_is_live_and_the_rng_replay_matters(monkeypatch):
    """The equality above is not vacuous: another dropout draw changes the gradients, and a
    recompute that does not replay the RNG state (preserve_rng_state=False) breaks them."""
    _, plain = _grads()
    _, other_seed = _grads(seed=2)
    assert _max_diff(plain, other_seed) > 1e-3
    import paddle.distributed.fleet.utils as fleet_utils

    real = fleet_utils.recompute
    monkeypatch.setattr(fleet_utils, "recompute",
                        lambda fn, *a, **k: real(fn, *a, preserve_rng_state=False, **k))
    _, no_replay = _grads({})
    assert _max_diff(plain, no_replay) > 1e-3


def test_no_recompute_in_eval_or_when_off(recompute_calls):
    model = build_model(MODEL)
    model.set_grad_checkpointing(True, interval=1)
    model.eval()
    model(paddle.zeros([1, 3, 16, 16]))
    model.train()
    model.set_grad_checkpointing(False)
    model(paddle.zeros([1, 3, 16, 16]))
    assert recompute_calls == []


def _engine_model(tmp_path, *overrides):
    cfg = get_config(tiny_config(tmp_path, tmp_path / "shapes"), list(overrides))
    ctx = SimpleNamespace(logger=logging.getLogger("test_recompute"))
    return cfg, engine_build_model(cfg, ctx)


def test_config_forms_reach_the_model(tmp_path):
    cfg, model = _engine_model(tmp_path)
    assert cfg.DistributedStrategy.recompute is False and not model.grad_checkpointing
    _, model = _engine_model(tmp_path, "DistributedStrategy.recompute=True")
    assert (model.grad_checkpointing, model.recompute_interval) == (True, 1)
    cfg, model = _engine_model(
        tmp_path, "DistributedStrategy.recompute={layerlist_interval: 2, names: [blocks.1]}")
    assert cfg.DistributedStrategy.recompute == {"layerlist_interval": 2, "names": ["blocks.1"]}
    assert (model.grad_checkpointing, model.recompute_interval) == (True, 2)
    assert model.recompute_names == {"blocks.1"}
    # PLSC's defaults for the mapping form: every block, no names
    cfg, model = _engine_model(tmp_path, "DistributedStrategy.recompute={}")
    assert cfg.DistributedStrategy.recompute == {"layerlist_interval": 1, "names": []}
    assert (model.grad_checkpointing, model.recompute_interval) == (True, 1)


@pytest.mark.parametrize("override, message", [
    ("DistributedStrategy.recompute={layerlist_interval: -1}",
     "DistributedStrategy.recompute.layerlist_interval: expected int >= 0"),
    ("DistributedStrategy.recompute={interval: 2}",
     "unknown key 'DistributedStrategy.recompute.interval'"),
    ("DistributedStrategy.recompute={names: blocks.1}",
     "DistributedStrategy.recompute.names: expected"),
    ("DistributedStrategy.recompute=3", "DistributedStrategy.recompute: expected"),
])
def test_bad_recompute_values_are_config_errors(tmp_path, override, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        get_config(tiny_config(tmp_path, tmp_path / "shapes"), [override])


def test_unknown_name_in_the_model(tmp_path):
    with pytest.raises(ConfigError, match=r"DistributedStrategy\.recompute\.names: unknown "
                                          r"layer name\(s\) 'blocks\.9', 'head'; recomputable: "
                                          r"blocks\.0 \.\.\. blocks\.1"):
        _engine_model(tmp_path, "DistributedStrategy.recompute={names: [blocks.9, head]}")


def test_unknown_name_exits_2_with_one_line(tmp_path):
    config = tiny_config(tmp_path, tmp_path / "shapes")
    r = run_tool("train", ["-c", config, "-o", "DistributedStrategy.recompute={names: [blk.0]}"])
    assert r.returncode == 2, r.stderr[-2000:]
    lines = [ln for ln in r.stderr.splitlines() if "ccache" not in ln and ln.strip()
             and "warnings.warn" not in ln]
    assert len(lines) == 1 and "'blk.0'" in lines[0], r.stderr[-2000:]
    assert "Traceback" not in r.stderr
