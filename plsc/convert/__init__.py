"""Checkpoint conversion and pretrained loading.

    npz_to_paddle(src, dst_prefix, check=False)    official ViT / R50+ViT npz -> .pdparams + .yaml
    paddle_to_npz(src_prefix, dst)                 .pdparams -> released-layout npz
    timm_to_paddle(src, dst_prefix, num_heads=None, act='gelu'), paddle_to_timm(src_prefix, dst)
    load_pretrained(model, path, finetune=False, pos_embed_interp='bilinear', log=print)
    bench_convert()                                timing / memory of a full-size ViT-B/16 conversion

Importing this package does not import paddle (the CLI's error paths stay fast); the functions
that need it import it when called.
"""
import os
import tempfile
import time
import tracemalloc

import numpy as np

from .npz import load_npz_as_state, npz_to_paddle, paddle_to_npz  # noqa: F401
from .timm import load_timm_as_state, paddle_to_timm, timm_to_paddle  # noqa: F401


def load_pretrained(model, path, finetune=False, pos_embed_interp="bilinear", log=print):
    """See plsc.convert.pretrained.load_pretrained (imported lazily: it needs paddle)."""
    from .pretrained import load_pretrained as _load
    return _load(model, path, finetune=finetune, pos_embed_interp=pos_embed_interp, log=log)


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


def bench_convert(workdir=None, check=False, log=print):
    """Convert a full-size random ViT-B/16 npz (npz2paddle, then paddle2npz back).

    Returns {'params', 'npz_mb', 'npz2paddle_s', 'npz2paddle_peak_mb', 'paddle2npz_s',
    'paddle2npz_peak_mb', 'roundtrip_bitwise'}; peaks are Python/numpy allocations traced
    with tracemalloc (the source dict itself is not counted: it is loaded from disk inside).
    """
    own = workdir is None
    tmp = tempfile.TemporaryDirectory() if own else None
    workdir = tmp.name if own else workdir
    try:
        src = os.path.join(workdir, "vit_b16.npz")
        params = random_released_vit()
        np.savez(src, **params)
        n = sum(a.size for a in params.values())
        del params
        out = {"params": int(n), "npz_mb": os.path.getsize(src) / 2 ** 20}
        quiet = (lambda *a, **k: None)
        for name, fn in (("npz2paddle", lambda: npz_to_paddle(src, os.path.join(workdir, "b16"),
                                                               check=check, log=log if check else quiet)),
                         ("paddle2npz", lambda: paddle_to_npz(os.path.join(workdir, "b16"),
                                                               os.path.join(workdir, "back.npz"),
                                                               log=quiet))):
            tracemalloc.start()
            t0 = time.perf_counter()
            fn()
            out[f"{name}_s"] = time.perf_counter() - t0
            out[f"{name}_peak_mb"] = tracemalloc.get_traced_memory()[1] / 2 ** 20
            tracemalloc.stop()
        with np.load(src) as a, np.load(os.path.join(workdir, "back.npz")) as b:
            out["roundtrip_bitwise"] = set(a.files) == set(b.files) and all(
                a[k].tobytes() == b[k].tobytes() for k in a.files)
        log("bench_convert: " + ", ".join(
            f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in out.items()))
        return out
    finally:
        if own:
            tmp.cleanup()
