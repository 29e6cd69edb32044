"""The model family's contract: the spec table drives models, counts and converters; the model
answers for its weight-decay exemptions, head, features and gradient checkpointing."""
import math
import re

import numpy as np
import paddle
import pytest
from test_vit import images, np_vit, randomize

from plsc import flops, registry, vit_spec
from plsc.convert import npz, timm
from plsc.convert.common import arch_from_state
from plsc.models import build_model
from plsc.models.factories import register_family

TINY = {"img_size": 16, "patch_size": 4, "embed_dim": 32, "depth": 2, "num_heads": 4,
        "class_num": 7}
HYBRID = {"name": "ViTHybrid", "img_size": 16, "patch_size": 8, "embed_dim": 32, "depth": 1,
          "num_heads": 2, "class_num": 3, "resnet_layers": [1, 1], "resnet_width": 32}
CONFIGS = [
    {"name": "VisionTransformer", **TINY},
    {"name": "VisionTransformer", **TINY, "global_pool": "gap", "representation_size": 8},
    {"name": "VisionTransformer", **TINY, "class_num": 0, "qkv_bias": False, "mlp_ratio": 2.5},
    HYBRID,
]
# The optimizer's historical default rule (PLSC's no_weight_decay_name), spelled out here so the
# test does not depend on plsc.optim.
DEFAULT_RULE = "bias norm gn pos_embed cls_token"


def _shapes(model):
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


@pytest.mark.parametrize("cfg", CONFIGS, ids=["token", "gap_rep", "nohead_noqkvbias", "hybrid"])
def test_model_state_is_its_spec_and_decay_rule(cfg):
    model = build_model(cfg)
    assert _shapes(model) == vit_spec.state_shapes(model.spec)
    assert vit_spec.count_params(model.spec) == sum(math.prod(s) for s in _shapes(model).values())
    rule = [re.compile(t) for t in DEFAULT_RULE.split()]
    by_rule = {n for n, _ in model.named_parameters() if any(r.search(n) for r in rule)}
    assert model.no_weight_decay() == by_rule
    assert model.head_names() == ("head0", "head")


def test_forward_head_pre_logits_matches_numpy_reference():
    for pool, rep in (("token", 24), ("gap", None)):
        model = build_model({"name": "VisionTransformer", **TINY, "global_pool": pool,
                             "representation_size": rep, "attn_impl": "math"})
        model.eval()
        sd = randomize(model)
        x = images()
        _, tokens, _ = np_vit(sd, x.numpy(), patch=4, heads=4, depth=2, global_pool=pool,
                              representation=bool(rep))
        want = tokens[:, 0] if pool == "token" else tokens.mean(1)
        if rep:
            want = np.tanh(want @ sd["head0.weight"] + sd["head0.bias"])
        with paddle.no_grad():
            got = model.forward_head(model.forward_features(x), pre_logits=True).numpy()
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
        assert got.shape == (2, rep or 32)


def test_set_grad_checkpointing(monkeypatch):
    import paddle.distributed.fleet.utils as fleet_utils

    calls = []
    real = fleet_utils.recompute
    monkeypatch.setattr(fleet_utils, "recompute", lambda fn, *a, **k: calls.append(fn)
                        or real(fn, *a, **k))
    model = build_model({"name": "VisionTransformer", **TINY})
    model.train()
    model.set_grad_checkpointing()
    model(images()).sum().backward()
    assert len(calls) == 2
    model.set_grad_checkpointing(False)
    model(images())
    assert len(calls) == 2


def test_sizes_derived_from_the_table():
    from plsc.convert import common
    assert common.HEADS_BY_WIDTH == {192: 3, 384: 6, 768: 12, 1024: 16, 1280: 16}
    assert common.SIZES[(768, 12, 12, 3072)] == "base"
    assert vit_spec.stem_stride((3, 4, 9)) == 16 and vit_spec.stem_stride(None) == 1


NEW = {"ViT_mini_patch4_16": vit_spec.Variant(
           vit_spec.ViTSpec(img_size=16, patch_size=4, embed_dim=24, depth=2, num_heads=3,
                            mlp_ratio=2.0), "test-only variant"),
       "ViT_mini_r2_s8_16": vit_spec.Variant(
           vit_spec.ViTSpec(img_size=16, patch_size=8, embed_dim=32, depth=1, num_heads=2,
                            resnet_layers=(1, 1), resnet_width=32), "test-only hybrid")}


@pytest.fixture
def table_with(monkeypatch):
    """Add variants to VARIANTS alone, then register the family as importing plsc.models does
    (into the global MODELS, whose entries are restored afterwards)."""
    def add(name):
        monkeypatch.setitem(vit_spec.VARIANTS, name, NEW[name])
        fresh = registry.Registry("model")
        register_family(fresh)
        for attr in ("_entries", "_runtime", "_checks"):  # a registry's whole per-name state
            monkeypatch.setattr(registry.MODELS, attr, getattr(fresh, attr))
    return add


@pytest.mark.parametrize("name", sorted(NEW))
def test_new_variant_is_one_table_line(name, table_with, tmp_path):
    table_with(name)
    spec = NEW[name].spec
    params = registry.MODELS.parameters(name)
    assert {k: params[k].default for k in spec.config()} == spec.config()
    assert name in flops.named_models()
    model = build_model({"name": name})
    randomize(model)
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    assert flops.model_info(name)["params"] == sum(v.size for v in state.values())
    # ours -> official npz -> ours: named after the new variant, bit-exact
    src = str(tmp_path / "m.npz")
    arch = arch_from_state(state, "m", num_heads=spec.num_heads)
    np.savez(src, **npz.ours_to_official(state, arch))
    res = npz.npz_to_paddle(src, str(tmp_path / "m"), check=True, log=lambda *a: None)
    assert res["model_config"]["name"] == name
    for k, v in state.items():
        np.testing.assert_array_equal(res["state"][k], v)
    if spec.resnet_layers is None:  # timm has no hybrid export
        named = timm.ours_to_timm(state)
        for k, w in named.items():  # torch Linear weights are [out, in]: rows = bias length
            if w.ndim == 2:
                assert w.shape[0] == named[k[:-len("weight")] + "bias"].shape[0], k
        back = timm.timm_to_ours(named)
        assert {k: v.tolist() for k, v in back.items()} == {k: v.tolist() for k, v in state.items()}
