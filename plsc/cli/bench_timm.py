"""The timm + PyTorch side of `tools/benchmark.py train --against timm`.

PyTorch and timm are never dependencies of plsc: they live in the benchmark's own environment,
e.g. `python -m venv --system-site-packages /work/venv-timm &&
/work/venv-timm/bin/pip install torch==2.14.1 torchvision==0.29.1 timm`. This file runs there as
a standalone script (stdlib + torch + timm only, it imports nothing from plsc), as a worker the
benchmark drives over a pipe, so that both frameworks run in separate processes (no clash of
their OpenMP/MKL runtimes) and their steps can still be interleaved round by round:

    parent -> worker : one line per request, "N" = run N training steps
    worker -> parent : one JSON line per request, {"seconds": wall time of the N steps}
The first line the worker writes says whether torch and timm imported, with their versions.

The step is what the plsc side measures: forward, softmax cross-entropy, backward, global-norm
clipping, AdamW (timm's parameter groups: no weight decay for biases, norms and tokens).
"""
import json
import os
import shutil
import subprocess
import sys

VENV_HINT = ("python -m venv --system-site-packages /work/venv-timm && /work/venv-timm/bin/pip "
             "install torch==2.14.1 torchvision==0.29.1 timm")


def timm_name(plsc_name):
    """timm's name of a plsc model (ViT_tiny_patch16_224 -> vit_tiny_patch16_224)."""
    return plsc_name.lower()


class TimmWorker:
    """A running worker process; `step(n)` -> seconds for n training steps; `close()`."""

    def __init__(self, python, model, batch_size, img_size, threads, lr, weight_decay, clip):
        args = [python, os.path.abspath(__file__), "--model", model, "--batch-size",
                str(batch_size), "--img-size", str(img_size), "--threads", str(threads),
                "--lr", repr(lr), "--weight-decay", repr(weight_decay), "--clip", repr(clip)]
        env = dict(os.environ, OMP_NUM_THREADS=str(threads))
        env.pop("PYTHONPATH", None)  # the worker needs nothing of plsc's tree
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, env=env)
        self.hello = self._read()

    def _read(self):
        line = self.proc.stdout.readline()
        if not line:
            err = self.proc.stderr.read().strip().splitlines()
            return {"ok": False, "error": err[-1] if err else "worker exited"}
        return json.loads(line)

    def step(self, n=1):
        self.proc.stdin.write(f"{n}\n")
        self.proc.stdin.flush()
        reply = self._read()
        if "seconds" not in reply:
            raise RuntimeError(f"timm worker failed: {reply.get('error')}")
        return reply["seconds"]

    def close(self):
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=60)


def find_timm_python(explicit=None):
    """The python to run the worker with: `explicit`, else this interpreter when it can import
    torch and timm, else None."""
    if explicit:
        return explicit if shutil.which(explicit) or os.path.isfile(explicit) else None
    import importlib.util

    if importlib.util.find_spec("torch") and importlib.util.find_spec("timm"):
        return sys.executable
    return None


# ---------------------------------------------------------------- the worker (torch side)

def _worker(argv):
    import argparse
    import time

    p = argparse.ArgumentParser()
    for name, typ in (("--model", str), ("--batch-size", int), ("--img-size", int),
                      ("--threads", int), ("--lr", float), ("--weight-decay", float),
                      ("--clip", float)):
        p.add_argument(name, type=typ, required=True)
    a = p.parse_args(argv)
    try:
        import timm
        import torch
        from timm.optim import create_optimizer_v2
    except ImportError as e:
        print(json.dumps({"ok": False, "error": f"{e}"}), flush=True)
        return
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    try:
        model = timm.create_model(a.model, pretrained=False, num_classes=1000,
                                  img_size=a.img_size)
    except RuntimeError as e:  # unknown model name
        print(json.dumps({"ok": False, "error": f"{e}"}), flush=True)
        return
    model.train()
    opt = create_optimizer_v2(model, "adamw", lr=a.lr, weight_decay=a.weight_decay)
    loss_fn = torch.nn.CrossEntropyLoss()
    x = torch.randn(a.batch_size, 3, a.img_size, a.img_size)
    y = torch.randint(0, 1000, (a.batch_size,))

    def step():
        loss = loss_fn(model(x), y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), a.clip)
        opt.step()
        opt.zero_grad(set_to_none=True)

    print(json.dumps({"ok": True, "torch": torch.__version__, "timm": timm.__version__,
                      "threads": torch.get_num_threads()}), flush=True)
    for line in sys.stdin:
        t = time.perf_counter()
        for _ in range(int(line)):
            step()
        print(json.dumps({"seconds": time.perf_counter() - t}), flush=True)


if __name__ == "__main__":
    _worker(sys.argv[1:])
