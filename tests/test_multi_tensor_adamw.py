"""Optimizer.use_multi_tensor: the multi-tensor AdamW (one fused kernel per parameter group)
gives the same update as paddle's AdamW, on a small ViT with weight-decay-exempt parameters and
layer decay (per-parameter learning rates), and keeps the same optimizer state.

Bitwise, not within a tolerance: both run the same per-element AdamW arithmetic in float32 on
CPU (only the kernel launch differs), so any difference is a wrong group lr, decay or beta power.
"""
import numpy as np
import paddle
import pytest

from plsc.errors import ConfigError
from plsc.models import VisionTransformer
from plsc.optim import build_lr_scheduler, build_optimizer
from plsc.optim.fused_adamw import FusedAdamW
from tiny import run_tool, tiny_config, worker_logs


def vit():
    paddle.seed(3)
    return VisionTransformer(img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2,
                             class_num=4)


def run_steps(model, optimizer, lr, rng, steps):
    for _ in range(steps):
        x = paddle.to_tensor(rng.standard_normal((6, 3, 16, 16)).astype("float32"))
        y = paddle.to_tensor(rng.integers(0, 4, 6))
        paddle.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        optimizer.clear_grad()
        lr.step()


def train(use_multi_tensor, steps=4, **opt):
    model = vit()
    lr = build_lr_scheduler({"name": "ViTLRScheduler", "learning_rate": 0.01,
                             "warmup_steps": 2}, 1, 10)
    cfg = {"name": "AdamW", "weight_decay": 0.3, "layer_decay": 0.6,
           "use_multi_tensor": use_multi_tensor, **opt}
    optimizer, _ = build_optimizer(cfg, lr, model)
    run_steps(model, optimizer, lr, np.random.default_rng(0), steps)
    weights = {k: v.numpy() for k, v in model.state_dict().items()}
    return model, optimizer, weights, state_by_structured_name(model, optimizer)


def state_by_structured_name(model, optimizer):
    """The optimizer state with each key's paddle parameter name (unique per model instance)
    replaced by the structured name, so two models' states compare."""
    names = {p.name: n for n, p in model.named_parameters()}
    state = {}
    for key, value in optimizer.state_dict().items():
        if isinstance(value, paddle.Tensor):
            param = max((p for p in names if key.startswith(p + "_")), key=len)
            state[names[param] + key[len(param):]] = np.asarray(value.numpy())
    return state


def assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_multi_tensor_adamw_is_the_same_update():
    model, fused, w1, s1 = train(True)
    _, plain, w0, s0 = train(False)
    assert isinstance(fused, FusedAdamW) and type(plain) is paddle.optimizer.AdamW
    assert_same(w1, w0)
    assert_same(s1, s0)  # moments, beta powers: same names, same values (portable checkpoints)
    # the test covers what it claims: several lr scales, exempt and decayed params, and steps
    # that moved the weights
    scales = {p.optimize_attr["learning_rate"] for p in model.parameters()}
    exempt = set(model.no_weight_decay())
    names = {n for n, _ in model.named_parameters()}
    assert len(scales) == 4 and exempt and names - exempt
    assert max(float(np.abs(w0[k] - v.numpy()).max())
               for k, v in vit().state_dict().items()) > 1e-3
    groups = {fused._group_key(p) for p in model.parameters()}
    assert len(groups) == 8  # (4 lr scales) x (decay or not): several params per call


@pytest.mark.parametrize("opt", [{"weight_decay": 0.0}, {"no_weight_decay_name": None},
                                 {"layer_decay": None, "betas": [0.8, 0.99], "eps": 1e-6}])
def test_same_update_without_decay_exemptions_or_layer_decay(opt):
    assert_same(train(True, 3, **opt)[2], train(False, 3, **opt)[2])


def test_a_checkpoint_of_one_continues_in_the_other():
    """2 fused steps, then paddle's AdamW loads the fused optimizer's state_dict and makes 2
    more: the same weights as 4 plain steps (the state is paddle AdamW's, names and all)."""
    model = vit()
    lr = build_lr_scheduler({"name": "ViTLRScheduler", "learning_rate": 0.01,
                             "warmup_steps": 2}, 1, 10)
    cfg = {"name": "AdamW", "weight_decay": 0.3, "layer_decay": 0.6}
    fused, _ = build_optimizer(dict(cfg, use_multi_tensor=True), lr, model)
    rng = np.random.default_rng(0)
    run_steps(model, fused, lr, rng, 2)
    with paddle.utils.unique_name.guard():  # state names as a resumed process makes them
        plain, _ = build_optimizer(cfg, lr, model)
        plain.set_state_dict(fused.state_dict())
        run_steps(model, plain, lr, rng, 2)
    assert_same({k: v.numpy() for k, v in model.state_dict().items()}, train(False)[2])


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return tmp_path_factory.mktemp("shapes")


def test_in_training_under_zero_stage1(tmp_path, data_root):
    """The engine, 2 processes: ZeRO stage 1 with the multi-tensor AdamW (each rank updates
    its shard of parameters through it) == plain data parallelism with paddle's AdamW."""
    opt = {"name": "AdamW", "weight_decay": 0.05, "epsilon": 1e-4, "layer_decay": 0.75,
           "grad_clip": {"name": "ClipGradByGlobalNorm", "clip_norm": 0.5}}
    runs = {}
    for name, overrides in (("fused", ["Optimizer.use_multi_tensor=true",
                                       "DistributedStrategy.sharding.sharding_stage=1",
                                       "DistributedStrategy.sharding.sharding_degree=2"]),
                            ("plain", [])):
        path = tiny_config(tmp_path / name, data_root, **{
            "Optimizer": opt, "Global.max_train_step": 3, "Global.eval_during_train": False,
            "LRScheduler.learning_rate": 0.01, "LRScheduler.warmup_steps": 0})
        args = ["-c", path] + (["-o", *overrides] if overrides else [])
        r = run_tool("train", args, nproc=2,
                     log_dir=tmp_path / name / "logs")
        assert r.returncode == 0, r.stderr[-2000:] + worker_logs(tmp_path / name / "logs")
        runs[name] = paddle.load(str(tmp_path / name / "out/VisionTransformer/latest.pdparams"))
    # equal weights also show that the fused updates ran: parameters left pending would not move
    assert_same({k: np.asarray(v) for k, v in runs["fused"].items()},
                {k: np.asarray(v) for k, v in runs["plain"].items()})
    assert "ZeRO stage 1" in (tmp_path / "fused/out/VisionTransformer/train.log").read_text()


def test_refused_with_master_weights():
    """AMP O2 (multi_precision): the fused kernel's fp16/bf16 path has no CPU kernel to check it
    against, so the combination is refused in one line."""
    lr = build_lr_scheduler({"name": "ViTLRScheduler", "learning_rate": 0.01}, 1, 10)
    with pytest.raises(ConfigError) as e:
        build_optimizer({"name": "AdamW", "use_multi_tensor": True}, lr, vit(),
                        multi_precision=True)
    assert str(e.value) == ("Optimizer.use_multi_tensor: true is not supported with FP16.level "
                            "O2 (fp32 master weights); set use_multi_tensor: false")
