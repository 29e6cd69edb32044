"""Checkpoint conversion and pretrained loading.

    npz_to_paddle(src, dst_prefix, check=False)    official ViT / R50+ViT npz -> .pdparams + .yaml
    paddle_to_npz(src_prefix, dst)                 .pdparams -> released-layout npz
    timm_to_paddle(src, dst_prefix, num_heads=None, act='gelu'), paddle_to_timm(src_prefix, dst)
    bench_convert()                                time and peak memory, full-size ViT-B/16

Importing this package does not import paddle (the CLI's error paths stay fast); the functions
that need it import it when called.
"""
import os
import tempfile
import time

import numpy as np

from .npz import load_npz_as_state, npz_to_paddle, paddle_to_npz  # noqa: F401
from .timm import load_timm_as_state, paddle_to_timm, timm_to_paddle  # noqa: F401


def random_released_vit(hidden=768, depth=12, heads=12, mlp=3072, patch=16, img=224,
                        classes=1000, seed=0):
    """A random checkpoint in the released npz layout (for benchmarks; float32)."""
    from .common import Arch
    from .npz import official_shapes
    arch = Arch(embed_dim=hidden, depth=depth, num_heads=heads, mlp_dim=mlp, patch_size=patch,
                in_chans=3, grid=(img // patch, img // patch), class_num=classes)
    rng = np.random.default_rng(seed)
    return {k: rng.standard_normal(s, dtype=np.float32) * np.float32(0.02)
            for k, s in official_shapes(arch, released=True).items()}


def _run_measured(code):
    """(wall seconds, peak RSS MiB) of `python -c code` in a fresh process.

    The peak is the child's own VmHWM (per address space, so not inflated by this process's
    memory the way a forked child's ru_maxrss is); Linux only."""
    import subprocess
    import sys
    hwm = ("\nprint([l.split()[1] for l in open('/proc/self/status') "
           "if l.startswith('VmHWM')][0])")
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", code + hwm], capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(f"benchmark step failed ({r.returncode}): {r.stderr[-500:]}")
    return time.perf_counter() - t0, int(r.stdout.split()[-1]) / 1024  # kB -> MiB


def bench_convert(workdir=None, log=print):
    """Convert a full-size random ViT-B/16 npz with npz2paddle, then back with paddle2npz.

    Measures each direction twice: in this process (conversion only, paddle already imported)
    and as the CLI in a fresh process (wall time incl. the paddle import, peak RSS), next to
    the peak RSS of a process that only imports paddle + plsc.models. Returns a dict.
    """
    import paddle  # noqa: F401  (warm import: in-process timings exclude it)
    own = workdir is None
    tmp = tempfile.TemporaryDirectory() if own else None
    workdir = tmp.name if own else workdir
    try:
        src = os.path.join(workdir, "vit_b16.npz")
        params = random_released_vit()
        np.savez(src, **params)
        n = sum(a.size for a in params.values())
        del params
        dst, back = os.path.join(workdir, "b16"), os.path.join(workdir, "back.npz")
        quiet = (lambda *a, **k: None)
        out = {"params": int(n), "npz_mb": os.path.getsize(src) / 2 ** 20}
        t0 = time.perf_counter()
        npz_to_paddle(src, dst, log=quiet)
        out["npz2paddle_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        paddle_to_npz(dst, back, log=quiet)
        out["paddle2npz_s"] = time.perf_counter() - t0
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        boot = f"import sys; sys.path.insert(0, {root!r}); "
        _, out["baseline_rss_mb"] = _run_measured(boot + "import paddle, plsc.models")
        out["cli_npz2paddle_s"], out["cli_npz2paddle_rss_mb"] = _run_measured(
            boot + f"from plsc.cli.convert import main; main(['npz2paddle', {src!r}, {dst!r}])")
        out["cli_paddle2npz_s"], out["cli_paddle2npz_rss_mb"] = _run_measured(
            boot + f"from plsc.cli.convert import main; main(['paddle2npz', {dst!r}, {back!r}])")
        with np.load(src) as a, np.load(back) as b:
            out["roundtrip_bitwise"] = set(a.files) == set(b.files) and all(
                a[k].tobytes() == b[k].tobytes() for k in a.files)
        log("bench_convert (ViT-B/16, random weights): " + ", ".join(
            f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in out.items()))
        return out
    finally:
        if own:
            tmp.cleanup()
