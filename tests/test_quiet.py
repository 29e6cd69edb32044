"""Every tool, run as a user runs it, prints plsc's lines and real problems only: none of the
known-harmless Paddle output that plsc/quiet.py silences, and plsc's one log format."""
import os

import pytest

from log_lines import PLSC_LOG, noise
from tiny import run_tool, tiny_config


def check(result, what):
    assert result.returncode == 0, f"{what}: {result.stderr[-2000:]}"
    found = noise(result.stdout) + noise(result.stderr)
    assert not found, f"{what}: {found}"
    for line in (result.stdout + result.stderr).splitlines():
        if line.startswith("["):
            assert PLSC_LOG.match(line), f"{what}: not plsc's log format: {line}"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("quiet")
    cfg = tiny_config(tmp, tmp / "shapes", train_size=8, val_size=4, epochs=1)
    check(run_tool("train", ["-c", cfg]), "train")
    run_dir = tmp / "out" / "VisionTransformer"
    return {"cfg": cfg, "tmp": tmp, "ckpt": str(run_dir / "latest"),
            "image": str(tmp / "shapes" / "val" / "000000.jpg"), "export": str(run_dir / "export")}


def test_single_process_tools_are_quiet(run, monkeypatch):
    cfg, weights = run["cfg"], f"Global.pretrained_model={run['ckpt']}"
    check(run_tool("eval", ["-c", cfg, "-o", weights]), "eval")
    result = run_tool("export", ["-c", cfg, "-o", weights])
    check(result, "export")
    # plsc's own lines still show, in plsc's format (not dropped with Paddle's root logger)
    assert any(PLSC_LOG.match(line) and "pretrained: loaded" in line
               for line in result.stderr.splitlines()), result.stderr
    # a user's OMP_NUM_THREADS > 1 makes `import paddle` warn about OpenBLAS builds
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    check(run_tool("predict", ["--model-dir", run["export"], "-i", run["image"]]),
          "predict --model-dir")
    monkeypatch.delenv("OMP_NUM_THREADS")
    check(run_tool("visualize_attention", ["-c", cfg, "-o", weights, "-i", run["image"],
                                           "--out", str(run["tmp"] / "vis")]), "visualize")
    check(run_tool("model_info", ["ViT_tiny_patch4_32"]), "model_info")
    check(run_tool("convert", ["paddle2npz", run["ckpt"], str(run["tmp"] / "w.npz")]),
          "convert paddle2npz")


def test_launched_training_is_quiet(run, tmp_path):
    log_dir = tmp_path / "launch"
    result = run_tool("train", ["-c", run["cfg"], "-o", f"Global.output_dir={tmp_path}"],
                      nproc=2, log_dir=log_dir)
    # The launcher itself imports paddle before any plsc code runs: its own ccache warning
    # and `LAUNCH INFO` lines are outside plsc's reach (README).
    launcher = [line for line in result.stderr.splitlines()
                if not line.startswith("LAUNCH INFO") and "ccache" not in line
                and line.strip() != "warnings.warn(warning_message)"]
    result.stderr = "\n".join(launcher)
    check(result, "launch train")
    for name in sorted(os.listdir(log_dir)):
        if name.startswith("workerlog"):
            found = noise((log_dir / name).read_text())
            assert not found, f"{name}: {found}"
