"""The self-launching part: run worker.py on `n` devices under `python -m
paddle.distributed.launch` (gloo processes on a CPU build, one process per GPU otherwise)."""
import os
import subprocess
import sys

from ..child import child_env
from . import hardware

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "worker.py")


def run_worker(ctx, nproc, args, tag, timeout=600):
    """Run `worker.py *args` on `nproc` devices; raises RuntimeError with the failing rank's log
    tail if the launch fails."""
    log_dir = os.path.join(ctx["workdir"], f"launch_{tag}")
    cmd = [sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", str(nproc),
           "--log_dir", log_dir]
    if hardware.gpu_count():
        cmd += ["--devices", ",".join(str(i) for i in range(nproc))]
    cmd += [WORKER, *map(str, args)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=child_env(),
                       cwd=ctx["workdir"])
    if r.returncode:
        raise RuntimeError(f"{nproc}-process launch failed (exit {r.returncode}); logs in "
                           f"{log_dir}: {_error_line(log_dir, r.stderr)}")


def _error_line(log_dir, stderr):
    """The most telling line of a failed launch: the first 'error' line of a worker log."""
    texts = [stderr]
    if os.path.isdir(log_dir):
        for name in sorted(os.listdir(log_dir)):
            with open(os.path.join(log_dir, name), errors="replace") as f:
                texts.append(f.read())
    for text in texts:
        for line in text.splitlines():
            if "error" in line.lower() and "warn" not in line.lower():
                return line.strip()[:300]
    return stderr.strip().splitlines()[-1][:300] if stderr.strip() else "no output"
