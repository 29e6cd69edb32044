"""Checkpoints: `{dir}/{prefix}.{pdparams,pdopt,pdstates}`, written so a crash never loses the
last good set.

- .pdparams: the model state dict in fp32 (loadable by PLSC and by our converters).
- .pdopt: optimizer state keyed by the model's *structured* parameter names (Paddle keys it by
  auto-generated names like `linear_3.w_0`, which change with build order), the LR scheduler,
  and the loss scaler.
- .pdstates: epoch, position inside the epoch, global step, best metric, seed, every rank's RNG,
  and the CRC32 of the .pdparams/.pdopt it belongs to.
Saving writes all three to temporary files first, keeps a hard-linked backup of the previous
set, renames the new files in (.pdstates last), then drops the backup. Loading checks the CRCs:
a set torn by a crash between renames is detected and the backup is used instead.
"""
import glob
import os
import pickle
import re
import zlib

import numpy as np
import paddle

from ..errors import ConfigError

EXTS = (".pdparams", ".pdopt", ".pdstates")


def _write(obj, path):
    if path.endswith(".pdstates"):
        # plain pickle: paddle.load would try to turn the numpy RNG state (uint32) into a tensor
        with open(path, "wb") as f:
            pickle.dump(obj, f, protocol=4)
    else:
        paddle.save(obj, path)
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def _crc(path):
    crc = 0
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            crc = zlib.crc32(chunk, crc)
    return crc


def _backup_prefix(base):
    return os.path.join(os.path.dirname(base), "." + os.path.basename(base) + ".bak")


def fp32_state_dict(model):
    """Model weights as fp32 numpy arrays (O2 keeps fp16 params; checkpoints are fp32)."""
    out = {}
    for k, v in model.state_dict().items():
        arr = v.astype("float32").numpy() if v.dtype in (paddle.float16, paddle.bfloat16) else v.numpy()
        out[k] = arr
    return out


def _rename_keys(state, mapping):
    """Rewrite optimizer-state keys `<param>_<acc>` by the longest matching param prefix."""
    names = sorted(mapping, key=len, reverse=True)
    out = {}
    for key, value in state.items():
        if key == "master_weights":
            out[key] = {mapping.get(k, k): v for k, v in value.items()}
            continue
        for name in names:
            if key.startswith(name + "_"):
                key = mapping[name] + key[len(name):]
                break
        out[key] = value
    return out


def optimizer_state(optimizer, model):
    """Optimizer state keyed by structured names (`blocks.0.attn.qkv.weight_moment1_0`)."""
    to_struct = {p.name: n for n, p in model.named_parameters()}
    return _rename_keys(optimizer.state_dict(), to_struct)


def load_optimizer_state(optimizer, model, state):
    to_paddle = {n: p.name for n, p in model.named_parameters()}
    optimizer.set_state_dict(_rename_keys(state, to_paddle))


def save(directory, prefix, model, optimizer=None, lr_scheduler=None, amp=None, states=None):
    os.makedirs(directory, exist_ok=True)
    base = os.path.join(directory, prefix)
    # Only rank 0 writes, so any other `.tmp-*` of this prefix is left by a process that was
    # killed mid-write (its `finally` never ran): remove it rather than let it pile up.
    for stale in glob.glob(glob.escape(base) + ".tmp-*"):
        os.remove(stale)
    tmp = f"{base}.tmp-{os.getpid()}"
    bak = _backup_prefix(base)
    objs = {".pdparams": fp32_state_dict(model)}
    if optimizer is not None:
        objs[".pdopt"] = {"optimizer": optimizer_state(optimizer, model),
                          "lr_scheduler": lr_scheduler.state_dict() if lr_scheduler else None,
                          "scaler": amp.state_dict() if amp is not None else {}}
    try:
        for ext, obj in objs.items():
            _write(obj, tmp + ext)
        states = dict(states or {}, files={ext: _crc(tmp + ext) for ext in objs})
        _write(states, tmp + ".pdstates")
        exts = list(objs) + [".pdstates"]
        if all(os.path.exists(base + e) for e in exts):
            for ext in exts:  # the old set stays reachable until the new one is complete
                os.link(base + ext, tmp + ".bak" + ext)
                os.replace(tmp + ".bak" + ext, bak + ext)
        for ext in exts:
            os.replace(tmp + ext, base + ext)
        remove(bak)
    finally:
        for path in glob.glob(glob.escape(tmp) + "*"):
            os.remove(path)
    return base


def strip_prefix(path):
    for ext in EXTS:
        if path.endswith(ext):
            return path[: -len(ext)]
    return path


def torn_reason(prefix):
    """None if the set at `prefix` is complete and consistent, else why not."""
    for ext in EXTS:
        if not os.path.isfile(prefix + ext):
            return f"{prefix + ext} not found"
    try:
        files = load_states(prefix).get("files", {})
    except Exception as e:  # a truncated pickle raises many different types
        return f"{prefix}.pdstates is unreadable ({type(e).__name__})"
    for ext, crc in files.items():
        if _crc(prefix + ext) != crc:
            return f"{prefix + ext} does not belong to {prefix}.pdstates (torn save)"
    return None


def load_resume(prefix, log=None):
    """Read a full checkpoint set for resuming; a torn set falls back to its backup."""
    prefix = strip_prefix(prefix)
    reason = torn_reason(prefix)
    if reason is not None:
        bak = _backup_prefix(prefix)
        if torn_reason(bak) is None:
            if log:
                log(f"{reason}; using the previous checkpoint kept at {bak}")
            prefix = bak
        else:
            raise ConfigError(f"Global.checkpoint: {reason} "
                              f"(resume needs {', '.join(os.path.basename(prefix) + e for e in EXTS)})")
    return paddle.load(prefix + ".pdparams"), paddle.load(prefix + ".pdopt"), load_states(prefix)


def load_states(prefix):
    """The .pdstates dict (a pickle of plain Python/numpy values written by plsc itself)."""
    with open(strip_prefix(prefix) + ".pdstates", "rb") as f:
        return pickle.load(f)


def set_model_state(model, state, source):
    """Strict load: every key present with the same shape (Paddle only warns on mismatches)."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = [f"{k} {list(state[k].shape)} vs model {list(own[k].shape)}"
             for k in own if k in state and list(state[k].shape) != list(own[k].shape)]
    problems = []
    if missing:
        problems.append("missing " + ", ".join(missing[:8]) + (" ..." if len(missing) > 8 else ""))
    if unexpected:
        problems.append("unexpected " + ", ".join(unexpected[:8]) + (" ..." if len(unexpected) > 8 else ""))
    if wrong:
        problems.append("shape mismatch " + "; ".join(wrong[:8]))
    if problems:
        raise ConfigError(f"{source} does not match the model: " + " | ".join(problems))
    for k, v in own.items():
        t = state[k] if isinstance(state[k], paddle.Tensor) else paddle.to_tensor(np.asarray(state[k]))
        v.set_value(t.astype(v.dtype) if t.dtype != v.dtype else t)


def epoch_checkpoints(directory):
    """Existing epoch_N prefixes, oldest first."""
    found = []
    for path in glob.glob(os.path.join(directory, "epoch_*.pdparams")):
        m = re.search(r"epoch_(\d+)\.pdparams$", path)
        if m:
            found.append((int(m.group(1)), strip_prefix(path)))
    return [p for _, p in sorted(found)]


def remove(prefix):
    for ext in EXTS:
        if os.path.exists(prefix + ext):
            os.remove(prefix + ext)
