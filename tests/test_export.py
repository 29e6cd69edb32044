"""Export (paddle.jit.save) and prediction: the exported predictor must reproduce the dygraph
model, and the predict CLI must report bad inputs per file with the documented exit codes."""
import json
import os
import shutil

import numpy as np
import paddle
import pytest
import yaml

from plsc import apis
from plsc.cli import predict as predict_cli
from plsc.config import get_config
from plsc.data.synthetic import ensure_generated
from plsc.engine.checkpoint import fp32_state_dict
from plsc.errors import ConfigError, DataError
from plsc.models import build_model
from log_lines import PLSC_INFO
from tiny import run_tool, tiny_config


def make_checkpoint(cfg_path, prefix, seed=0, dtype="float32", **model_overrides):
    """Random weights (head included: the model's zero head would tie every class)."""
    cfg = get_config(cfg_path)
    paddle.seed(seed)
    model = build_model({**dict(cfg.Model), **model_overrides})
    rng = np.random.default_rng(seed)
    state = {k: (v + 0.2 * rng.standard_normal(v.shape)).astype(dtype)
             for k, v in fp32_state_dict(model).items()}
    paddle.save(state, prefix + ".pdparams")
    return prefix


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("export")
    data = tmp / "shapes"
    cfg_path = tiny_config(tmp, data)
    ensure_generated(str(data), 4, 32, 13, 16, 0)
    ckpt = make_checkpoint(cfg_path, str(tmp / "w"))
    cfg = get_config(cfg_path, [f"Global.pretrained_model={ckpt}"])
    out = apis.export_model(cfg)
    images = sorted(str(p) for p in (data / "val").rglob("*.jpg"))
    return {"cfg": cfg_path, "ckpt": ckpt, "out": out, "tmp": tmp, "images": images,
            "labels": (data / "labels.txt").read_text().split()}


def dygraph_logits(cfg_path, ckpt, batch):
    model = apis.init_model(cfg_path, ckpt, device="cpu")
    return model.logits(batch)


# ----------------------------------------------------------------------------- export

def test_export_writes_the_documented_files(tiny):
    out = tiny["out"]
    export_dir = os.path.join(str(tiny["tmp"]), "out", "VisionTransformer", "export")
    assert out["dir"] == export_dir
    assert sorted(os.listdir(export_dir)) == ["infer_cfg.yaml", "inference.json",
                                              "inference.pdiparams"]
    assert not [n for n in os.listdir(os.path.dirname(export_dir)) if ".tmp-" in n]
    info = yaml.safe_load(open(out["infer_cfg"]))
    assert info["Export"]["input_shape"] == [None, 3, 16, 16]
    assert info["PostProcess"]["class_names"] == tiny["labels"]
    assert info["PostProcess"]["topk"] == 5
    eval_ops = get_config(tiny["cfg"]).DataLoader.Eval.dataset.transform_ops
    assert [list(op) for op in info["PreProcess"]["transform_ops"]] == \
        [list(op) for op in eval_ops]
    assert info["PreProcess"]["transform_ops"][1]["NormalizeImage"]["mean"] == [0.5, 0.5, 0.5]


@pytest.mark.parametrize("batch_size", [1, 3])
def test_exported_predictor_equals_dygraph(tiny, batch_size):
    batch = np.random.default_rng(batch_size).standard_normal(
        (batch_size, 3, 16, 16)).astype(np.float32)
    exported = apis.init_model(tiny["out"]["dir"], device="cpu")
    assert exported.kind == "predictor"
    got = exported.logits(batch)
    want = dygraph_logits(tiny["cfg"], tiny["ckpt"], batch)
    assert got.shape == (batch_size, 4)
    assert np.abs(got - want).max() <= 1e-4
    assert np.abs(want).max() > 0.1  # a meaningful comparison, not two zero heads


def test_exported_inference_model_equals_dygraph(tiny):
    exported = apis.init_model(tiny["out"]["dir"], device="cpu")
    dygraph = apis.init_model(tiny["cfg"], tiny["ckpt"], device="cpu")
    assert exported.class_names == dygraph.class_names == tiny["labels"]
    paths = tiny["images"][:6]
    for a, b in zip(apis.inference_model(exported, paths), apis.inference_model(dygraph, paths)):
        assert a["topk_labels"] == b["topk_labels"] and a["pred_class"] == b["pred_class"]
        np.testing.assert_allclose(a["topk_scores"], b["topk_scores"], atol=1e-5)
    np.testing.assert_array_equal(exported.preprocess(paths[0]), dygraph.preprocess(paths[0]))


def test_fp16_checkpoint_and_o2_config_export_fp32(tiny, tmp_path):
    """PLSC O2 checkpoints hold fp16 tensors; the export must hold fp32 weights anyway."""
    ckpt = make_checkpoint(tiny["cfg"], str(tmp_path / "half"), seed=1, dtype="float16")
    cfg = get_config(tiny["cfg"], [f"Global.pretrained_model={ckpt}", "FP16.level=O2",
                                   f"Global.output_dir={tmp_path}"])
    out = apis.export_model(cfg, check=True)
    assert out["check_max_diff"] <= 1e-4
    loaded = paddle.jit.load(os.path.join(out["dir"], "inference"))
    dtypes = {str(v.dtype) for v in loaded.state_dict().values()}
    assert dtypes == {"paddle.float32"}


def test_export_input_shape_must_fit_the_model(tiny, tmp_path):
    base = [f"Global.pretrained_model={tiny['ckpt']}", f"Global.output_dir={tmp_path}"]
    cfg = get_config(tiny["cfg"], base + ["Export.input_shape=[None, 3, 32, 32]"])
    with pytest.raises(ConfigError, match=r"^Export.input_shape \[None, 3, 32, 32\] does not fit "
                                          r"the model: expected \[None, 3, 16, 16\] \(Model "
                                          r"img_size 16\)$"):
        apis.export_model(cfg)
    # a fixed batch size in the config still exports a dynamic batch dimension
    cfg = get_config(tiny["cfg"], base + ["Export.input_shape=[8, 3, 16, 16]"])
    out = apis.export_model(cfg)
    assert out["input_shape"] == [None, 3, 16, 16]
    got = apis.init_model(out["dir"]).logits(np.zeros((2, 3, 16, 16), np.float32))
    assert got.shape == (2, 4)
    assert not os.path.exists(os.path.join(str(tmp_path), "VisionTransformer",
                                           "export.tmp-" + str(os.getpid())))


def test_export_needs_weights(tiny):
    with pytest.raises(ConfigError, match=r"export needs trained weights: set "
                                          r"-o Global.pretrained_model=PREFIX"):
        apis.export_model(get_config(tiny["cfg"]))


def test_exported_dir_missing_file(tiny, tmp_path):
    broken = tmp_path / "export"
    shutil.copytree(tiny["out"]["dir"], broken)
    os.remove(broken / "inference.pdiparams")
    with pytest.raises(DataError) as e:
        apis.init_model(str(broken))
    assert str(e.value) == (f"exported model directory {broken} lacks inference.pdiparams "
                            f"(tools/export.py writes inference.json, inference.pdiparams and "
                            f"infer_cfg.yaml)")
    with pytest.raises(DataError, match=r"^.*nowhere does not exist \(expected a config file or "
                                        r"an exported model directory\)$"):
        apis.init_model(str(tmp_path / "nowhere"))


# ----------------------------------------------------------------------------- predict CLI

def run_predict(argv, capsys):
    """(exit code, stdout lines, stderr lines) of an in-process predict run."""
    try:
        code = predict_cli.main(argv) or 0
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out.splitlines(), [line for line in err.splitlines()
                                    if not PLSC_INFO.match(line)]


@pytest.fixture()
def mixed_dir(tiny, tmp_path):
    d = tmp_path / "imgs"
    d.mkdir()
    for p in tiny["images"][:3]:
        shutil.copy(p, d)
    (d / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    (d / "notes.txt").write_text("not an image")
    return d


def test_predict_cli_reports_bad_files_and_predicts_the_rest(tiny, mixed_dir, tmp_path, capsys):
    out_json = tmp_path / "pred.json"
    code, out, err = run_predict(["--model-dir", tiny["out"]["dir"], "-i", str(mixed_dir),
                                  str(tmp_path / "missing.jpg"), "--topk", "2",
                                  "--json", str(out_json)], capsys)
    assert code == 0
    good = sorted(os.path.join(str(mixed_dir), os.path.basename(p)) for p in tiny["images"][:3])
    assert [line.split(": ")[0] for line in out] == good
    expected = apis.inference_model(apis.init_model(tiny["cfg"], tiny["ckpt"]), good, topk=2)
    for line, r in zip(out, expected):
        name, label = r["pred_class"], r["pred_label"]
        assert line.startswith(f"{good[out.index(line)]}: {name} ({label}) ")
        assert " | top-2: " in line
    assert err[:3] == [
        f"skipped {mixed_dir / 'broken.jpg'}: cannot decode image {mixed_dir / 'broken.jpg'} "
        f"(not an image file?)",
        f"skipped {mixed_dir / 'notes.txt'}: cannot decode image {mixed_dir / 'notes.txt'} "
        f"(not an image file?)",
        f"skipped {tmp_path / 'missing.jpg'}: image not found: {tmp_path / 'missing.jpg'}",
    ]
    data = json.loads(out_json.read_text())
    assert [p["file"] for p in data["predictions"]] == good
    assert [p["pred_label"] for p in data["predictions"]] == [r["pred_label"] for r in expected]
    assert len(data["skipped"]) == 3


def test_predict_cli_nothing_predicted_exits_2(tiny, tmp_path, capsys):
    d = tmp_path / "junk"
    d.mkdir()
    (d / "a.jpg").write_bytes(b"junk")
    code, out, err = run_predict(["--model-dir", tiny["out"]["dir"], "-i", str(d)], capsys)
    assert code == 2 and out == []
    assert err[-1] == "error: no image could be predicted (1 input(s) skipped)"


def test_predict_cli_missing_export_file_exits_2(tiny, tmp_path, capsys):
    broken = tmp_path / "export"
    shutil.copytree(tiny["out"]["dir"], broken)
    os.remove(broken / "infer_cfg.yaml")
    code, out, err = run_predict(["--model-dir", str(broken), "-i", tiny["images"][0]], capsys)
    assert code == 2 and out == []
    assert err == [f"error: exported model directory {broken} lacks infer_cfg.yaml "
                   f"(tools/export.py writes inference.json, inference.pdiparams and "
                   f"infer_cfg.yaml)"]


def test_predict_cli_checkpoint_mismatch_exits_2(tiny, tmp_path, capsys):
    other = make_checkpoint(tiny["cfg"], str(tmp_path / "big"), depth=3)
    code, out, err = run_predict(["-c", tiny["cfg"], "-o", f"Global.pretrained_model={other}",
                                  "-i", tiny["images"][0]], capsys)
    assert code == 2 and out == [] and len(err) == 1
    assert err[0].startswith("error: ") and "checkpoint has" in err[0] and "blocks.2" in err[0]


def test_predict_cli_argument_errors(tiny, capsys):
    code, _, err = run_predict(["-i", tiny["images"][0]], capsys)
    assert code == 2 and err == ["error: give either -c CONFIG (with -o "
                                 "Global.pretrained_model=PREFIX) or --model-dir EXPORTED_DIR"]
    code, _, err = run_predict(["-c", tiny["cfg"], "-i", tiny["images"][0]], capsys)
    assert code == 2 and err == ["error: prediction needs trained weights: set "
                                 "-o Global.pretrained_model=PREFIX (or use --model-dir)"]


def test_export_and_predict_tools_end_to_end(tiny, tmp_path):
    """The installed entry points: tools/export.py --check, then tools/predict.py on its output."""
    r = run_tool("export", ["-c", tiny["cfg"], "-o", f"Global.pretrained_model={tiny['ckpt']}",
                            f"Global.output_dir={tmp_path}", "--check"])
    assert r.returncode == 0, r.stderr
    export_dir = os.path.join(str(tmp_path), "VisionTransformer", "export")
    lines = r.stdout.splitlines()
    assert lines[0].startswith(f"exported VisionTransformer: {export_dir}/inference.json, ")
    assert "(input [None, 3, 16, 16], fp32, class names: dataset SyntheticShapes)" in lines[0]
    diff = float(lines[1].rsplit("= ", 1)[1])
    assert lines[1].startswith("check: max |logits diff| exported vs dygraph = ") and diff <= 1e-4
    r = run_tool("predict", ["--model-dir", export_dir, "-i", tiny["images"][0]])
    assert r.returncode == 0, r.stderr
    pred = apis.inference_model(apis.init_model(tiny["cfg"], tiny["ckpt"]), tiny["images"][0])
    assert r.stdout.startswith(f"{tiny['images'][0]}: {pred['pred_class']} "
                               f"({pred['pred_label']}) {pred['pred_score']:.4f} | top-4: ")
