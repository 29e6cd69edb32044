"""Optimizers, weight-decay exemption and global-norm clipping against numpy float64."""
import numpy as np
import paddle
import pytest

from plsc.errors import ConfigError
from plsc.optim import build_lr_scheduler, build_optimizer, split_decay
from plsc.optim.clip import ClipGradByGlobalNorm, build_grad_clip
from plsc.registry import OPTIMIZERS


class Attn(paddle.nn.Layer):
    def __init__(self, d):
        super().__init__()
        self.qkv = paddle.nn.Linear(d, 3 * d)
        self.proj = paddle.nn.Linear(d, d)


class Mlp(paddle.nn.Layer):
    def __init__(self, d):
        super().__init__()
        self.fc1 = paddle.nn.Linear(d, 2 * d)
        self.fc2 = paddle.nn.Linear(2 * d, d)


class Block(paddle.nn.Layer):
    def __init__(self, d):
        super().__init__()
        self.norm1 = paddle.nn.LayerNorm(d)
        self.attn = Attn(d)
        self.norm2 = paddle.nn.LayerNorm(d)
        self.mlp = Mlp(d)


class PatchEmbed(paddle.nn.Layer):
    def __init__(self, d):
        super().__init__()
        self.proj = paddle.nn.Conv2D(3, d, 2, stride=2)


class TinyViT(paddle.nn.Layer):
    """Parameter names as in PLSC's ViT (no forward needed: grads are set directly)."""

    def __init__(self, d=4, depth=2, classes=3):
        super().__init__()
        self.pos_embed = self.create_parameter([1, 5, d])
        self.cls_token = self.create_parameter([1, 1, d])
        self.patch_embed = PatchEmbed(d)
        self.blocks = paddle.nn.LayerList([Block(d) for _ in range(depth)])
        self.norm = paddle.nn.LayerNorm(d)
        self.head0 = paddle.nn.Linear(d, d)
        self.head = paddle.nn.Linear(d, classes)


EXEMPT = {"pos_embed", "cls_token", "patch_embed.proj.bias", "norm.weight", "norm.bias",
          "head0.bias", "head.bias"} | {
    f"blocks.{i}.{n}" for i in range(2) for n in (
        "norm1.weight", "norm1.bias", "norm2.weight", "norm2.bias", "attn.qkv.bias",
        "attn.proj.bias", "mlp.fc1.bias", "mlp.fc2.bias")}


def make_model(seed=0):
    paddle.seed(seed)
    model = TinyViT()
    rng = np.random.default_rng(seed)
    for p in model.parameters():  # non-trivial values everywhere (LayerNorm starts at 1/0)
        p.set_value(rng.normal(0, 0.5, p.shape).astype("float32"))
    return model


def set_grads(named, grads):
    """Give each param exactly the grad `grads[name]` via backward of sum(p * G)."""
    for p in dict(named).values():
        p.clear_gradient(False)
    loss = paddle.add_n([(p * paddle.to_tensor(grads[n])).sum() for n, p in named
                         if n in grads])
    loss.backward()


def random_grads(named, rng, scale=1.0):
    return {n: rng.normal(0, scale, p.shape).astype("float32") for n, p in named}


def snapshot(named):
    return {n: p.numpy().astype(np.float64) for n, p in named}


def test_default_exemption_is_exactly_biases_norms_pos_embed_cls_token():
    decay, no_decay = split_decay(make_model())
    assert {n for n, _ in no_decay} == EXEMPT
    decayed = {n for n, _ in decay}
    assert "blocks.0.mlp.fc1.weight" in decayed and "head0.weight" in decayed
    assert "patch_embed.proj.weight" in decayed and "blocks.1.attn.qkv.weight" in decayed
    assert len(decayed) + len(EXEMPT) == len(make_model().parameters())


def test_exemption_patterns_are_regexes_and_null_decays_everything():
    model = make_model()
    _, no_decay = split_decay(model, r"^head\. fc\d\.weight$")
    assert {n for n, _ in no_decay} == {"head.weight", "head.bias", "blocks.0.mlp.fc1.weight",
                                        "blocks.0.mlp.fc2.weight", "blocks.1.mlp.fc1.weight",
                                        "blocks.1.mlp.fc2.weight"}
    assert split_decay(model, None)[1] == [] and split_decay(model, "")[1] == []
    with pytest.raises(ConfigError, match="'fc1\\(' is not a valid regular expression"):
        split_decay(model, "bias fc1(")


def test_frozen_parameters_are_not_optimized():
    model = make_model()
    model.pos_embed.stop_gradient = True
    sched = build_lr_scheduler({"name": "Constant", "learning_rate": 0.1}, 1, 1)
    opt, _ = build_optimizer({"name": "AdamW"}, sched, model)
    names = {p.name for p in opt._parameter_list}
    assert model.pos_embed.name not in names and model.cls_token.name in names


def adamw_ref(p, g, m, v, t, lr, b1, b2, eps, wd):
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    mhat, vhat = m / (1 - b1 ** t), v / (1 - b2 ** t)
    return p - lr * wd * p - lr * mhat / (np.sqrt(vhat) + eps), m, v


def test_adamw_two_steps_match_numpy_with_decay_exemption_and_scheduler_lr():
    model = make_model()
    named = list(model.named_parameters())
    # cosine without warmup: lr(0) = 0.1, lr(1) < 0.1 -> the second step must see the new lr
    sched = build_lr_scheduler({"name": "CosineWarmup", "learning_rate": 0.1}, 1, 4)
    cfg = {"name": "AdamW", "betas": (0.8, 0.95), "epsilon": 1e-3, "weight_decay": 0.3}
    opt, clip = build_optimizer(cfg, sched, model)
    assert clip is None
    rng = np.random.default_rng(1)
    ref = snapshot(named)
    m = {n: 0.0 for n in ref}
    v = {n: 0.0 for n in ref}
    for t in (1, 2):
        lr = sched()
        grads = random_grads(named, rng)
        set_grads(named, grads)
        assert opt.get_lr() == lr
        opt.step()
        sched.step()
        opt.clear_grad()
        for n in ref:
            wd = 0.0 if n in EXEMPT else 0.3
            ref[n], m[n], v[n] = adamw_ref(ref[n], grads[n].astype(np.float64), m[n], v[n], t,
                                           lr, 0.8, 0.95, 1e-3, wd)
    assert sched.last_epoch == 2 and sched() < 0.1
    for n, p in named:
        np.testing.assert_allclose(p.numpy(), ref[n], rtol=0, atol=1e-6, err_msg=n)


@pytest.mark.parametrize("nesterov", [False, True])
def test_momentum_l2_two_steps_match_numpy(nesterov):
    model = make_model()
    named = list(model.named_parameters())
    sched = build_lr_scheduler({"name": "CosineWarmup", "learning_rate": 0.05}, 1, 3)
    cfg = {"name": "Momentum", "momentum": 0.9, "weight_decay": 0.01, "use_nesterov": nesterov}
    opt, _ = build_optimizer(cfg, sched, model)
    rng = np.random.default_rng(2)
    ref = snapshot(named)
    vel = {n: 0.0 for n in ref}
    for _ in range(2):
        lr = sched()
        grads = random_grads(named, rng)
        set_grads(named, grads)
        opt.step()
        sched.step()
        opt.clear_grad()
        for n in ref:
            g = grads[n].astype(np.float64) + (0.0 if n in EXEMPT else 0.01) * ref[n]
            vel[n] = 0.9 * vel[n] + g
            ref[n] = ref[n] - lr * ((g + 0.9 * vel[n]) if nesterov else vel[n])
    for n, p in named:
        np.testing.assert_allclose(p.numpy(), ref[n], rtol=0, atol=1e-6, err_msg=n)


def test_optimizer_state_round_trip_restores_scheduler_position():
    def build():
        model = make_model()
        sched = build_lr_scheduler({"name": "ViTLRScheduler", "learning_rate": 0.1,
                                    "warmup_steps": 2}, 2, 3)
        opt, _ = build_optimizer({"name": "AdamW", "weight_decay": 0.1}, sched, model)
        return model, sched, opt

    model, sched, opt = build()
    named = list(model.named_parameters())
    rng = np.random.default_rng(3)
    for _ in range(3):
        set_grads(named, random_grads(named, rng))
        opt.step()
        sched.step()
        opt.clear_grad()
    state = opt.state_dict()
    _, sched2, opt2 = build()
    opt2.set_state_dict(state)
    assert sched2.last_epoch == 3 and sched2() == sched()


def test_clip_uses_one_global_norm_over_all_groups():
    model = make_model()
    named = list(model.named_parameters())
    decay, no_decay = split_decay(model)
    grads = random_grads(named, np.random.default_rng(4), scale=0.5)
    norm = np.sqrt(sum((g.astype(np.float64) ** 2).sum() for g in grads.values()))
    assert norm > 1.0
    for params in ([p for _, p in named],
                   [{"params": [p for _, p in decay]}, {"params": [p for _, p in no_decay]}]):
        set_grads(named, grads)
        total = build_grad_clip({"name": "ClipGradByGlobalNorm", "clip_norm": 1.0})(params)
        assert float(total) == pytest.approx(norm, rel=1e-6)
        for n, p in named:  # every param scaled by the SAME factor clip / global norm
            np.testing.assert_allclose(p.grad.numpy(), grads[n] * (1.0 / norm), rtol=1e-5,
                                       atol=1e-7, err_msg=n)
        # the clipped grads now have global norm == clip_norm
        assert np.sqrt(sum((p.grad.numpy().astype(np.float64) ** 2).sum()
                           for _, p in named)) == pytest.approx(1.0, rel=1e-5)


def test_clip_below_threshold_and_params_without_grad():
    model = make_model()
    named = list(model.named_parameters())
    grads = {n: g for n, g in random_grads(named, np.random.default_rng(5), 0.01).items()
             if "norm" not in n}  # LayerNorm params get no grad at all
    set_grads(named, grads)
    assert model.norm.weight.grad is None
    norm = np.sqrt(sum((g.astype(np.float64) ** 2).sum() for g in grads.values()))
    clip = ClipGradByGlobalNorm(clip_norm=10)
    assert float(clip([p for _, p in named])) == pytest.approx(norm, rel=1e-6)
    for n, g in grads.items():
        np.testing.assert_array_equal(dict(named)[n].grad.numpy(), g)
    assert clip([]) == 0.0


class FakeParam:
    def __init__(self, grad):
        self.grad = grad


def test_clip_norm_is_accumulated_in_float32_for_fp16_grads():
    # 300**2 = 90000 overflows float16 (max 65504): the norm must not be inf
    g = np.full([4], 300.0, dtype=np.float16)
    params = [FakeParam(paddle.to_tensor(g)), FakeParam(paddle.to_tensor(g))]
    total = ClipGradByGlobalNorm(1.0e9)(params)
    assert float(total) == pytest.approx(np.sqrt(8 * 300.0 ** 2), rel=1e-6)
    assert params[0].grad.dtype == paddle.float16


def test_clip_leaves_non_finite_grads_for_the_scaler():
    bad = np.array([1.0, np.inf], dtype=np.float32)
    params = [FakeParam(paddle.to_tensor(bad)), FakeParam(paddle.to_tensor([3.0, 4.0]))]
    assert ClipGradByGlobalNorm(1.0)(params) == float("inf")
    np.testing.assert_array_equal(params[1].grad.numpy(), [3.0, 4.0])


def test_published_plsc_keys_and_runtime_args_hidden():
    for name in ("AdamW", "Momentum"):
        keys = set(OPTIMIZERS.parameters(name))
        assert not keys & {"model", "learning_rate", "multi_precision"}
        assert {"weight_decay", "no_weight_decay_name", "grad_clip"} <= keys
    model = make_model()
    sched = build_lr_scheduler({"name": "ViTLRScheduler", "learning_rate": 3e-3}, 1, 1)
    # the keys of PLSC's ViT_base / ViT_large configs, as the config layer delivers them
    cfg = {"name": "AdamW", "betas": (0.9, 0.999), "epsilon": 1e-8, "weight_decay": 0.3,
           "use_master_param": False, "exp_avg_force_fp32": True,
           "grad_clip": {"name": "ClipGradByGlobalNorm", "clip_norm": 1.0}}
    opt, clip = build_optimizer(cfg, sched, model, multi_precision=True)
    assert isinstance(opt, paddle.optimizer.AdamW) and opt._multi_precision
    assert clip.clip_norm == 1.0 and opt._grad_clip is None
    opt, clip = build_optimizer({"name": "Momentum", "momentum": 0.9, "weight_decay": 0.0001,
                                 "grad_clip": {"name": "ClipGradByGlobalNorm",
                                               "clip_norm": 1.2}}, sched, model)
    assert isinstance(opt, paddle.optimizer.Momentum) and clip.clip_norm == 1.2


@pytest.mark.parametrize("cfg, message", [
    ({"name": "AdamW", "epsilom": 1e-8}, "unknown key 'Optimizer.epsilom'; did you mean 'Optimizer.epsilon'"),
    ({"name": "Adamw"}, "did you mean 'AdamW'"),
    ({"name": "AdamW", "betas": [0.9]}, "Optimizer.betas: expected list of 2 (float in [0, 1), float in [0, 1)), got list [0.9]"),
    ({"name": "AdamW", "betas": [0.9, 1.0]}, "Optimizer.betas: expected list of 2 (float in [0, 1), float in [0, 1)), got list [0.9, 1.0]"),
    ({"name": "AdamW", "weight_decay": -0.1}, "Optimizer.weight_decay: expected float >= 0, got float -0.1"),
    ({"name": "Momentum", "momentum": "0.9"}, "Optimizer.momentum: expected float in [0, 1), got str '0.9'"),
    ({"name": "AdamW", "grad_clip": {"name": "ClipGradByNorm", "clip_norm": 1.0}},
     "did you mean 'ClipGradByGlobalNorm'"),
    ({"name": "AdamW", "grad_clip": {"name": "ClipGradByGlobalNorm", "clip_norm": 0}},
     "Optimizer.grad_clip.clip_norm: expected float > 0, got int 0"),
    ({"name": "AdamW", "grad_clip": {"name": "ClipGradByGlobalNorm", "clipnorm": 1}},
     "unknown key 'Optimizer.grad_clip.clipnorm'; did you mean 'Optimizer.grad_clip.clip_norm'?"),
    ({"name": "AdamW", "no_weight_decay_name": ["bias", ""]},
     "Optimizer.no_weight_decay_name: expected str of space-separated regular expressions or "
     "list of str (non-empty substrings) or null, got list ['bias', '']"),
    ({"name": "AdamW", "no_weight_decay_name": "bias fc1("},
     "Optimizer.no_weight_decay_name: expected str of space-separated regular expressions or "
     "list of str (non-empty substrings) or null, got str 'bias fc1('"),
    ({"name": "AdamW", "grad_clip": {"clip_norm": 1.0}},
     "Optimizer.grad_clip: missing key 'name' (the grad clip to build; registered: "
     "ClipGradByGlobalNorm)"),
])
def test_config_errors_are_one_line(cfg, message):
    sched = build_lr_scheduler({"name": "Constant", "learning_rate": 0.1}, 1, 1)
    with pytest.raises(ConfigError) as e:
        build_optimizer(cfg, sched, make_model())
    assert message in str(e.value) and "\n" not in str(e.value)


def test_default_exemption_covers_the_hybrid_group_norms():
    from plsc.models.hybrid import ViTHybrid

    model = ViTHybrid(resnet_layers=(1, 1, 1), resnet_width=32, img_size=32, patch_size=16,
                      embed_dim=32, depth=1, num_heads=2, class_num=3)
    decay, no_decay = split_decay(model)
    no_decay = {n for n, _ in no_decay}
    gn = {n for n, _ in model.named_parameters() if ".gn" in n}
    assert gn and gn <= no_decay
    assert all(".conv" not in n or n.endswith("bias") for n in no_decay)
    assert "patch_embed.backbone.root.conv.weight" in {n for n, _ in decay}


def test_absent_no_weight_decay_name_asks_the_model():
    model = make_model()
    model.no_weight_decay = lambda: {"pos_embed", "head.bias"}
    _, no_decay = split_decay(model)
    assert {n for n, _ in no_decay} == {"pos_embed", "head.bias"}
    sched = build_lr_scheduler({"name": "Constant", "learning_rate": 0.1}, 1, 1)
    opt, _ = build_optimizer({"name": "AdamW", "weight_decay": 0.1}, sched, model)
    exempt = {p.name for n, p in model.named_parameters() if n in {"pos_embed", "head.bias"}}
    assert all(opt._apply_decay_param_fun(p.name) == (p.name not in exempt)
               for p in model.parameters())
    # an explicit value wins over the model: null decays all, a string keeps its regexes
    assert split_decay(model, None)[1] == []
    assert {n for n, _ in split_decay(model, "cls_token")[1]} == {"cls_token"}


def test_converter_reads_yaml_with_the_project_loader(tmp_path):
    from plsc.convert.npz import read_model_config

    path = tmp_path / "m.yaml"
    path.write_text("Model:\n  name: VisionTransformer\n  epsilon: 1e-6\n  betas: (0.9, 0.999)\n")
    assert read_model_config(str(path)) == {"name": "VisionTransformer", "epsilon": 1e-6,
                                            "betas": [0.9, 0.999]}
