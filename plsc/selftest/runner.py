"""Runs the checks in order and prints the table. Each check is `fn(ctx) -> [Result]`; ctx
holds the work directory, the synthetic data root, the CLI arguments and what one check hands
to a later one (the fp32 losses, the data-parallel weights, the GPU probe)."""
import os
import shutil
import tempfile
import time

from . import attention, parallel, precision, probe, scaler
from .report import format_table
from .result import FAIL, Result

# (name for --only, function); the order matters: amp compares with fp32, sharding with dp,
# memory reuses the throughput probe.
CHECKS = (
    ("fp32", precision.check_fp32),
    ("amp", precision.check_amp),
    ("scaler", scaler.check_scaler),
    ("attention", attention.check_attention),
    ("dp", parallel.check_dp),
    ("sharding", parallel.check_sharding),
    ("throughput", probe.check_throughput),
    ("memory", probe.check_memory),
)
NAMES = tuple(name for name, _ in CHECKS)


def run_checks(args, only=NAMES):
    """[Result] of the selected checks; an exception inside a check is its FAIL."""
    workdir = args.workdir or tempfile.mkdtemp(prefix="plsc_selftest_")
    ctx = {"workdir": workdir, "data": os.path.join(workdir, "shapes"), "args": args}
    results = []
    try:
        for name, fn in CHECKS:
            if name in only:
                results += _run_one(name, fn, ctx)
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    return results


def _run_one(name, fn, ctx):
    try:
        return fn(ctx)
    except Exception as e:  # noqa: BLE001 - a broken path is this check's FAIL, not a crash
        if ctx["args"].debug:
            raise
        return [Result(name, FAIL, "", f"error: {type(e).__name__}: {e}")]


def main(args):
    """Print the table; returns the exit status (1 when any check failed)."""
    start = time.time()
    results = run_checks(args, args.only or NAMES)
    print(format_table(results, time.time() - start))
    return 1 if any(r.status == FAIL for r in results) else 0

