"""Fresh Python processes for measurements that must not share a process (peak memory, a GPU
probe, multi-process launches): the environment that makes this tree's `plsc` importable, and
one JSON result read back from a child module."""
import json
import os
import subprocess
import sys

PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def child_env():
    """os.environ with this tree first on PYTHONPATH (so a child imports the same plsc)."""
    return dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (PACKAGE_ROOT, os.environ.get("PYTHONPATH")) if p))


def run_json_child(module, job, timeout=None):
    """Run `python -m module '<job as JSON>'` and return the last JSON line it prints; a failed
    child raises RuntimeError with the last line of its stderr."""
    r = subprocess.run([sys.executable, "-m", module, json.dumps(job)], capture_output=True,
                       text=True, env=child_env(), cwd=PACKAGE_ROOT, timeout=timeout)
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
    if r.returncode or not lines:
        tail = (r.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"{module} {json.dumps(job)} failed (exit {r.returncode}): {tail}")
    return json.loads(lines[-1])
