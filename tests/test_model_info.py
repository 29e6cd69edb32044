"""Analytic parameter and MAC counts (plsc/flops.py) against published numbers and against
models actually built and run with counting hooks."""
import numpy as np
import paddle
import pytest

from plsc import flops
from plsc.cli import model_info as cli
from plsc.errors import ConfigError
from plsc.models import build_model


def test_published_sizes():
    b16 = flops.model_info("ViT_base_patch16_224")
    assert b16["params"] == 86_567_656
    assert abs(b16["gmacs"] - 17.6) <= 0.05
    h14 = flops.model_info("ViT_huge_patch14_224")
    assert h14["params"] == 632_045_800
    assert flops.model_info("ViT_base_r50_s16_224")["params"] == 98_659_112


def test_img_size_and_overrides():
    at384 = flops.model_info("ViT_base_patch16_224", img_size=384)
    assert at384["img_size"] == 384
    assert at384["params"] == 86_567_656 + (24 * 24 - 14 * 14) * 768  # only pos_embed grows
    with_pre_logits = flops.model_info({"name": "ViT_base_patch16_224",
                                        "representation_size": 768, "class_num": 21843})
    assert with_pre_logits["params"] == 86_567_656 - 769_000 + 768 * 769 + 769 * 21843
    with pytest.raises(ConfigError, match=r"img_size 100 is not divisible by patch_size 16"):
        flops.model_info("ViT_base_patch16_224", img_size=100)


def count_by_hooks(model, img_size, in_chans=3):
    """MACs of one image measured on the built model: forward hooks on every conv and Linear
    (output elements x inputs per output) + attention matmuls from the attention shapes."""
    from plsc.models.hybrid import StdConv2d

    total = [0]

    def conv_hook(layer, inputs, output):
        w = layer.weight
        total[0] += int(np.prod(output.shape[1:])) * int(np.prod(w.shape[1:]))

    def linear_hook(layer, inputs, output):
        rows = int(np.prod(inputs[0].shape[:-1]))
        total[0] += rows * int(layer.weight.shape[0]) * int(layer.weight.shape[1])

    handles = []
    for layer in model.sublayers():
        if isinstance(layer, (paddle.nn.Conv2D, StdConv2d)):
            handles.append(layer.register_forward_post_hook(conv_hook))
        elif isinstance(layer, paddle.nn.Linear):
            handles.append(layer.register_forward_post_hook(linear_hook))
    model.eval()
    with paddle.no_grad():
        tokens, attns = model.forward_features(paddle.zeros([1, in_chans, img_size, img_size]),
                                               return_attn=True)
        model.forward_head(tokens)
    for h in handles:
        h.remove()
    dim = tokens.shape[-1]
    for a in attns:  # [1, H, N, N]: QK^T and AV, each N * N * Dh per head
        total[0] += 2 * a.shape[2] * a.shape[3] * dim
    return total[0]


SMALL = {"name": "VisionTransformer", "img_size": 16, "patch_size": 4, "embed_dim": 24,
         "depth": 2, "num_heads": 3, "class_num": 5}


@pytest.mark.parametrize("extra", [
    {},
    {"global_pool": "gap"},
    {"representation_size": 16},
    {"class_num": 0},
    {"qkv_bias": False, "mlp_ratio": 2.5},
    {"in_chans": 1, "img_size": 24, "patch_size": 6},
])
def test_counts_equal_built_vit(extra):
    cfg = {**SMALL, **extra}
    model = build_model(cfg)
    info = flops.model_info(cfg)
    assert info["params"] == sum(int(np.prod(p.shape)) for p in model.parameters())
    assert info["macs"] == count_by_hooks(model, cfg["img_size"], cfg.get("in_chans", 3))


def test_counts_equal_built_hybrid():
    cfg = {"name": "ViTHybrid", "img_size": 40, "patch_size": 8, "embed_dim": 32, "depth": 1,
           "num_heads": 2, "class_num": 3, "resnet_layers": [1, 2], "resnet_width": 32}
    model = build_model(cfg)
    info = flops.model_info(cfg)
    assert info["params"] == sum(int(np.prod(p.shape)) for p in model.parameters())
    # 40 -> 20 (root conv) -> 10 (pool) -> 5 (stage 2): odd sizes exercise the SAME rounding
    assert info["macs"] == count_by_hooks(model, 40)
    assert info["parts"]["resnet_stem"] > 0


def run_cli(argv, capsys):
    try:
        code = cli.main(argv) or 0
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, [line for line in err.splitlines() if "ccache" not in line
                       and "warnings.warn" not in line]


def test_cli_one_model(capsys):
    code, out, _ = run_cli(["ViT_base_patch16_224"], capsys)
    assert code == 0
    assert out.splitlines()[0] == ("ViT_base_patch16_224 @ 224px: 86,567,656 params (86.57M), "
                                   "17.6 GMACs")
    assert "GMACs = multiply-accumulates" in out


def test_cli_table_lists_every_named_model(capsys):
    code, out, _ = run_cli(["--all"], capsys)
    assert code == 0
    rows = {line.split()[0]: line.split() for line in out.splitlines()[1:-1]}
    assert set(rows) == set(flops.named_models())
    assert "VisionTransformer" not in rows and "ViTHybrid" not in rows
    assert rows["ViT_base_patch16_224"][1:] == ["224", "86.57M", "17.6"]
    assert rows["ViT_huge_patch14_224"][1:3] == ["224", "632.05M"]
    code, out2, _ = run_cli([], capsys)
    assert code == 0 and out2 == out


def test_cli_config_and_errors(tmp_path, capsys):
    cfg = tmp_path / "m.yaml"
    cfg.write_text("Model:\n  name: ViT_tiny_patch16_224\n  class_num: 10\n")
    code, out, _ = run_cli([str(cfg), "--img-size", "384"], capsys)
    expect = flops.model_info({"name": "ViT_tiny_patch16_224", "class_num": 10}, img_size=384)
    assert code == 0 and out.startswith(f"ViT_tiny_patch16_224 @ 384px: {expect['params']:,} ")
    code, out, err = run_cli(["ViT_base_patch16_22"], capsys)
    assert code == 2 and out == ""
    assert err == ["error: unknown model 'ViT_base_patch16_22'; did you mean "
                   "'ViT_base_patch16_224' or 'DeiT_base_patch16_224' or 'ViT_base_patch8_224'?"]
