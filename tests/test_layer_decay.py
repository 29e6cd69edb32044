"""Layer-wise lr decay, AdamW's `eps` alias and PLSC's list form of no_weight_decay_name,
checked on the updates themselves against numpy AdamW / SGD-momentum re-derivations."""
import os

import numpy as np
import paddle
import pytest

from plsc.errors import ConfigError
from plsc.models.vit import VisionTransformer
from plsc.optim import build_lr_scheduler, build_optimizer, split_decay
from tiny import tiny_config

DEPTH = 3


def make_vit(seed=0):
    paddle.seed(seed)
    model = VisionTransformer(img_size=8, patch_size=4, embed_dim=8, depth=DEPTH, num_heads=2,
                              class_num=3)
    rng = np.random.default_rng(seed)
    for p in model.parameters():  # non-trivial values everywhere (LayerNorm starts at 1/0)
        p.set_value(rng.normal(0, 0.5, p.shape).astype("float32"))
    return model


def expected_layer(name):
    """The layer of a ViT parameter, written out by hand (BEiT's numbering)."""
    if name.split(".")[0] in ("cls_token", "pos_embed", "patch_embed"):
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    return DEPTH + 1  # norm, head


def exempt_by_hand(names):
    return {n for n in names if n in ("cls_token", "pos_embed") or n.endswith(".bias")
            or n.split(".")[-2] in ("norm", "norm1", "norm2")}


def step_once(model, cfg, grads, lr=0.1, steps=1):
    """Apply `steps` optimizer steps with the fixed grads; returns {name: p_after - p_before}."""
    named = list(model.named_parameters())
    sched = build_lr_scheduler({"name": "Constant", "learning_rate": lr}, 1, 10)
    opt, _ = build_optimizer(cfg, sched, model)
    before = {n: p.numpy().astype(np.float64) for n, p in named}
    for _ in range(steps):
        for p in model.parameters():
            p.clear_gradient(False)
        paddle.add_n([(p * paddle.to_tensor(grads[n])).sum() for n, p in named]).backward()
        opt.step()
        sched.step()
    return {n: p.numpy().astype(np.float64) - before[n] for n, p in named}, before


def grads_for(model, seed=1):
    rng = np.random.default_rng(seed)
    return {n: rng.normal(0, 1, p.shape).astype("float32") for n, p in model.named_parameters()}


def test_model_owns_its_layer_ids():
    model = make_vit()
    assert model.num_layers() == DEPTH
    for name, _ in model.named_parameters():
        assert model.layer_id(name) == expected_layer(name), name
    assert model.layer_id("dist_token") == 0  # a distilled DeiT's extra token


def test_hybrid_stem_is_layer_zero():
    from plsc.models.hybrid import ViTHybrid

    model = ViTHybrid(img_size=32, patch_size=16, embed_dim=16, depth=1, num_heads=2,
                      resnet_width=32, resnet_layers=[1, 1, 1], class_num=3)
    stem = [n for n, _ in model.named_parameters() if n.startswith("patch_embed.backbone.")]
    assert len(stem) > 30 and {model.layer_id(n) for n in stem} == {0}
    assert model.layer_id("blocks.0.mlp.fc1.weight") == 1 and model.layer_id("head.bias") == 2


@pytest.mark.parametrize("key", ["layer_decay", "layerwise_decay"])
def test_adamw_update_is_scaled_per_layer_weight_decay_included(key):
    ld, lr, wd, eps = 0.5, 0.1, 0.2, 1e-8
    model = make_vit()
    grads = grads_for(model)
    delta, before = step_once(model, {"name": "AdamW", "weight_decay": wd, key: ld}, grads, lr)
    exempt = exempt_by_hand(delta)
    seen = set()
    for n, d in delta.items():
        s = ld ** (DEPTH + 1 - expected_layer(n))
        seen.add(s)
        g = grads[n].astype(np.float64)
        mhat, vhat = g, g * g  # first step: bias-corrected moments are g and g^2
        want = -lr * s * (0.0 if n in exempt else wd) * before[n] \
            - lr * s * mhat / (np.sqrt(vhat) + eps)
        np.testing.assert_allclose(d, want, rtol=0, atol=2e-7, err_msg=n)
    assert seen == {ld ** k for k in range(DEPTH + 2)}


def test_momentum_update_is_scaled_per_layer():
    ld, lr, wd, mu = 0.75, 0.1, 0.01, 0.9
    model = make_vit()
    grads = grads_for(model, 2)
    cfg = {"name": "Momentum", "momentum": mu, "weight_decay": wd, "layer_decay": ld}
    delta, before = step_once(model, cfg, grads, lr, steps=2)
    exempt = exempt_by_hand(delta)
    for n, d in delta.items():
        s = ld ** (DEPTH + 1 - expected_layer(n))
        p, v = before[n], 0.0
        for _ in range(2):  # L2 decay in the gradient, then v = mu v + g, p -= lr * s * v
            v = mu * v + grads[n] + (0.0 if n in exempt else wd) * p
            p = p - lr * s * v
        np.testing.assert_allclose(d, p - before[n], rtol=0, atol=2e-7, err_msg=n)


@pytest.mark.parametrize("name", ["AdamW", "Momentum"])
def test_layer_decay_one_is_bitwise_no_layer_decay(name):
    grads = grads_for(make_vit())
    plain, _ = step_once(make_vit(), {"name": name, "weight_decay": 0.05}, grads, steps=2)
    one, _ = step_once(make_vit(), {"name": name, "weight_decay": 0.05, "layer_decay": 1.0},
                       grads, steps=2)
    assert all(np.array_equal(plain[n], one[n]) for n in plain)
    assert any(np.abs(plain[n]).max() > 0 for n in plain)


def test_deit_list_of_substrings_exempts_tokens_norms_and_biases():
    model = make_vit()
    names = [n for n, _ in model.named_parameters()]
    _, no_decay = split_decay(model, ["cls_token", "pos_embed", "norm", "bias"])
    assert {n for n, _ in no_decay} == exempt_by_hand(names)
    assert {n for n, _ in no_decay} == model.no_weight_decay()
    # substrings, not regular expressions: "(" is an ordinary character, "." matches a dot only
    assert split_decay(model, ["norm("])[1] == []
    assert {n for n, _ in split_decay(model, ["s.1.n"])[1]} == {"blocks.1.norm1.weight",
                                                                  "blocks.1.norm1.bias",
                                                                  "blocks.1.norm2.weight",
                                                                  "blocks.1.norm2.bias"}
    assert split_decay(model, ["s.1xn"])[1] == []


def test_eps_is_adamws_epsilon():
    model = make_vit()
    sched = build_lr_scheduler({"name": "Constant", "learning_rate": 0.1}, 1, 1)
    assert build_optimizer({"name": "AdamW", "eps": 1e-3}, sched, model)[0]._epsilon == 1e-3
    assert build_optimizer({"name": "AdamW", "epsilon": 1e-4}, sched, model)[0]._epsilon == 1e-4
    assert build_optimizer({"name": "AdamW"}, sched, model)[0]._epsilon == 1e-8


@pytest.mark.parametrize("cfg, message", [
    ({"name": "AdamW", "eps": 1e-8, "epsilon": 1e-8}, "epsilon and eps are the same setting"),
    ({"name": "Momentum", "layer_decay": 0.7, "layerwise_decay": 0.7},
     "layer_decay and layerwise_decay are the same setting"),
    ({"name": "AdamW", "layer_decay": 1.5}, "layer_decay"),
    ({"name": "AdamW", "layer_decay": 0.0}, "layer_decay"),
    ({"name": "AdamW", "no_weight_decay_name": ["bias", ""]}, "no_weight_decay_name"),
])
def test_config_errors_are_one_line(cfg, message):
    sched = build_lr_scheduler({"name": "Constant", "learning_rate": 0.1}, 1, 1)
    with pytest.raises(ConfigError, match=message) as e:
        build_optimizer(cfg, sched, make_vit())
    assert "\n" not in str(e.value)


def test_model_without_layer_ids_is_a_config_error():
    model = paddle.nn.Linear(2, 2)
    sched = build_lr_scheduler({"name": "Constant", "learning_rate": 0.1}, 1, 1)
    with pytest.raises(ConfigError, match=r"layer_decay: the model \(Linear\) does not say"):
        build_optimizer({"name": "AdamW", "layer_decay": 0.75}, sched, model)


def test_resume_mid_epoch_with_layer_decay_equals_uninterrupted(tmp_path, tmp_path_factory):
    from plsc.config import get_config
    from plsc.engine import build_trainer, run

    def train(path, *overrides):
        trainer = build_trainer(get_config(path, list(overrides)))
        run(trainer)
        return trainer

    data_root = tmp_path_factory.mktemp("shapes")
    adamw = {"name": "AdamW", "weight_decay": 0.1, "layer_decay": 0.75}
    full = tiny_config(tmp_path / "full", data_root, **{"Global.max_train_step": 11,
                                                        "Optimizer": adamw})
    part = tiny_config(tmp_path / "part", data_root, **{"Global.max_train_step": 3,
                                                        "Optimizer": adamw})
    train(full)
    train(part)
    out = tmp_path / "part/out/VisionTransformer"
    train(part, f"Global.checkpoint={out / 'latest'}", "Global.max_train_step=11")
    load = lambda run_dir: paddle.load(os.path.join(run_dir, "out/VisionTransformer/latest.pdparams"))
    a, b = load(tmp_path / "full"), load(tmp_path / "part")
    assert all(np.array_equal(np.asarray(a[k]), np.asarray(b[k])) for k in a)
    # and the run without layer decay ends elsewhere (the setting reached the updates)
    plain = tiny_config(tmp_path / "plain", data_root, **{"Global.max_train_step": 11,
                                                          "Optimizer": dict(adamw, layer_decay=None)})
    train(plain)
    c = load(tmp_path / "plain")
    assert max(float(np.abs(np.asarray(a[k]) - np.asarray(c[k])).max()) for k in a) > 1e-3
