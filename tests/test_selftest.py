"""tools/selftest.py on this CPU build: the CPU subset passes, every GPU check is listed as SKIP
with its reason, and a check made to fail (the test-only tolerance hook) fails the tool.

The equivalences themselves (2 processes = 1 process with the doubled batch, sharding = plain
DP, sdpa = math, planner = allocator peak) are the selftest's own references; what is tested
here is that the tool runs them and reports them truthfully. One run of the whole tool is shared
by the tests that read its table (a module fixture, ~30 s)."""
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from plsc.selftest import engine_run, hardware, scaler
from plsc.selftest.config import train_config
from plsc.selftest.result import TOLERANCE_SCALE_ENV
from tiny import ROOT

CPU_AMP = "CPU build: Paddle AMP is a no-op on CPU"
# every row a CPU build prints: name -> (status, reason or detail it must show)
EXPECTED = {
    "fp32 training (3 steps, twice)": ("PASS", "the repeat run's differ by 0 (relative, tolerance 0)"),
    "AMP fp16 O1 vs fp32": ("SKIP", CPU_AMP),
    "AMP fp16 O2 vs fp32": ("SKIP", CPU_AMP),
    "AMP bf16 O1 vs fp32": ("SKIP", CPU_AMP),
    "AMP bf16 O2 vs fp32": ("SKIP", CPU_AMP),
    "fp16 loss scaler: inf gradient": ("SKIP", CPU_AMP),
    # float noise: the math path's softmax is plsc's CPU kernel, sdpa's is Paddle's
    "attention sdpa vs math fp32": ("PASS", "on CPU Paddle's sdpa runs its math backend"),
    "attention sdpa vs math fp16": ("SKIP", CPU_AMP),
    "attention sdpa vs math bf16": ("SKIP", CPU_AMP),
    "data parallel: 2 devices = 1 x batch 8": ("PASS", "after 3 momentum-SGD steps"),
    "sharding stage 1 = data parallel": ("PASS", "vs plain data parallel, 2 devices, 3 AdamW"),
    "sharding stage 2 = data parallel": ("SKIP", "sharding_stage 2 needs a GPU build"),
    "sharding stage 3 = data parallel": ("SKIP", "sharding_stage 3 needs a GPU build"),
    "throughput ViT-B/16 fp16 O2": ("SKIP", "no GPU"),
    "memory planner vs measured peak": ("PASS", "ViT_tiny_patch16_224 fp32 batch 4"),
}


def selftest(*args, env=None):
    return subprocess.run([sys.executable, os.path.join(ROOT, "tools", "selftest.py"), *args],
                          capture_output=True, text=True, timeout=600, cwd=ROOT,
                          env=dict(os.environ, PYTHONPATH=ROOT, **(env or {})))


def table(stdout):
    """{check: (status, figure, details)} of the printed table."""
    rows = {}
    for line in stdout.splitlines():
        cells = re.split(r"\s{2,}", line.strip(), maxsplit=3)
        if len(cells) >= 3 and cells[1] in ("PASS", "FAIL", "SKIP"):
            rows[cells[0]] = (cells[1], cells[2], cells[3] if len(cells) > 3 else "")
    return rows


@pytest.fixture(scope="module")
def full_run():
    return selftest()


def test_cpu_subset_passes_and_lists_every_check(full_run):
    r = full_run
    assert r.returncode == 0, r.stdout + r.stderr
    rows = table(r.stdout)
    assert rows.keys() == EXPECTED.keys(), r.stdout
    for name, (status, text) in EXPECTED.items():
        assert rows[name][0] == status and text in rows[name][2], (name, rows[name])
    assert "Traceback" not in r.stderr
    assert r.stdout.splitlines()[0].startswith("plsc selftest: Paddle ")
    assert re.search(r"^5 passed, 0 failed, 10 skipped in \d+ s$", r.stdout, re.M), r.stdout


def test_cpu_figures_are_the_measured_ones(full_run):
    rows = table(full_run.stdout)
    # 2 gloo processes vs 1 process: float32 noise, not 0 (a different summation order), and
    # below the stated tolerance (measured 3.0e-8); stage 1 applies the same update as DP
    # (measured bitwise)
    dp = float(rows["data parallel: 2 devices = 1 x batch 8"][1])
    assert 0 < dp <= 6e-7
    assert float(rows["sharding stage 1 = data parallel"][1]) == 0.0
    ratio = float(rows["memory planner vs measured peak"][1].split()[1])
    assert 1.0 <= ratio <= 1.3


def test_a_failing_check_fails_the_tool(tmp_path):
    """A negative tolerance (the test-only hook) makes the sdpa/math agreement fail."""
    r = selftest("--only", "attention", env={TOLERANCE_SCALE_ENV: "-1"})
    assert r.returncode == 1, r.stdout + r.stderr
    rows = table(r.stdout)
    status, figure, details = rows["attention sdpa vs math fp32"]
    assert status == "FAIL" and float(figure) < 1e-5 and "exceeds the tolerance -1e-05" in details
    assert rows.keys() == {f"attention sdpa vs math {d}" for d in ("fp32", "fp16", "bf16")}
    assert "0 passed, 1 failed, 2 skipped" in r.stdout


def test_bad_option_is_one_line_exit_2():
    r = selftest("--batch", "0")
    lines = [ln for ln in r.stderr.splitlines() if ln.strip() and "ccache" not in ln
             and "warnings.warn" not in ln]
    assert r.returncode == 2 and lines == ["error: --batch: expected an integer >= 1, got 0"]


# ---------------------------------------------------------------- GPU logic, checked on CPU
def test_injected_inf_gradient_skips_the_step_and_keeps_the_weights(tmp_path):
    """The scaler check's fault injection, on CPU (no scaler: the engine's non-finite skip):
    the step with the inf gradient moves nothing, the step before it does."""
    path = train_config(tmp_path, tmp_path / "shapes", "cpu")
    for step, expect_moved in ((1, True), (scaler.INJECT_STEP, False)):
        trainer = engine_run.build(path, [f"Global.output_dir={tmp_path / str(step)}"])
        first = trainer.model.parameters()[0]

        def inject(s):
            return (first.register_hook(lambda g: g * float("inf")).remove
                    if s == scaler.INJECT_STEP else None)

        rec = engine_run.train(trainer, around_step=step, on_step=inject)
        moved = engine_run.max_abs_diff(rec["before"], rec["after"])
        assert (moved > 1e-4) == expect_moved, (step, moved)
    assert [s.status for s in rec["steps"]] == ["ok", "nonfinite", "ok", "ok"]
    assert all(np.isfinite(v).all() for v in engine_run.params_snapshot(trainer.model).values())


def _record(**kw):
    rec = {"statuses": ["ok", "overflow", "ok", "ok"], "scale": 1024.0, "new_scale": 512.0,
           "moved": 0.0, "checksum": 3.5}
    return dict(rec, **kw)


@pytest.mark.parametrize("ranks,problem", [
    ([_record(), _record()], None),
    ([_record(new_scale=1024.0)], "must drop"),
    ([_record(scale=None, new_scale=None, statuses=["ok", "nonfinite", "ok", "ok"])],
     "expected only step 2 skipped as an overflow"),
    ([_record(moved=1e-3)], "moved the weights by 0.001"),
    ([_record(), _record(checksum=3.6)], "ranks disagree"),
])
def test_scaler_verdict(ranks, problem):
    got = scaler.judge(ranks)
    assert got.status == ("PASS" if problem is None else "FAIL")
    assert problem is None or problem in got.note, got.note


@pytest.mark.parametrize("name,given,expected", [
    ("NVIDIA H100 PCIe", None, 756.0), ("NVIDIA H100 80GB HBM3", None, 989.0),
    ("NVIDIA A100-SXM4-80GB", None, 312.0), ("NVIDIA L40S", None, 362.0),
    ("NVIDIA L4", None, 121.0), ("Tesla V100-SXM2-32GB", None, 125.0),
    ("Mystery GPU", None, None), ("Mystery GPU", 100.0, 100.0),
])
def test_peak_tflops_table(name, given, expected):
    peak, source = hardware.peak_tflops(name, given)
    assert peak == expected
    assert ("--peak-tflops" in source) == (expected is None or given is not None)


def test_gpu_probe_report(monkeypatch):
    """The throughput and memory rows from a given GPU measurement: MFU = 6 x MACs x images/s
    / peak, with ViT-B/16's 17.56 GMACs per 224 px image (the published figure, e.g. timm's
    17.6 GFLOPs counted as MACs), and the planned/measured ratio."""
    from types import SimpleNamespace

    from plsc.selftest import probe

    monkeypatch.setattr(hardware, "half_reason", lambda dtype: None)
    monkeypatch.setattr(hardware, "no_gpu_reason", lambda: None)
    monkeypatch.setattr(hardware, "device_name", lambda: "NVIDIA A100-SXM4-80GB")
    measured = {"ips": 1000.0, "peak": 50 * 2**30, "batch": 256, "plan": 55 * 2**30,
                "macs": probe.count_macs(probe.spec_from_kwargs(
                    probe.model_spec(probe.GPU_MODEL)))[0]}
    ctx = {"args": SimpleNamespace(peak_tflops=None, batch=None), "probe": measured}
    [row] = probe.check_throughput(ctx)
    assert row.status == "PASS" and row.figure == "1000.0 img/s"
    mfu = 6 * 17.56e9 * 1000 / 312e12
    got = float(re.search(r"MFU ([\d.]+)%", row.note).group(1)) / 100
    assert abs(got - mfu) < 0.002, row.note  # 33.8%, printed to 0.1%
    assert "datasheet peak of A100" in row.note and "the planner's largest" in row.note
    [mem] = probe.check_memory(ctx)
    assert (mem.status, mem.figure) == ("PASS", "ratio 1.10")
    ctx["probe"] = dict(measured, plan=40 * 2**30)  # the planner undershoots by 20%
    assert probe.check_memory(ctx)[0].status == "FAIL"
