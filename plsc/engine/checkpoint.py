"""Checkpoints: what one holds, how it is written so a crash never loses the last good set, and
how it is restored (capture() and restore() are the two halves of the same list).

A set is `{dir}/{prefix}.{pdparams,pdopt,pdstates}`, plus `.pdema` when EMA is on:
- .pdparams: the model state dict in fp32 (loadable by PLSC and by our converters).
- .pdopt: optimizer state keyed by the model's *structured* parameter names (Paddle keys it by
  auto-generated names like `linear_3.w_0`, which change with build order), the LR scheduler,
  and the loss scaler. Always the whole state: under ZeRO sharding rank 0 writes the shards
  gathered from every rank, and each rank takes its shard back on load (sharding.py; under
  stage 3 the .pdparams too is gathered whole, and each rank cuts its slices on load).
- .pdstates: JSON. Run position (epochs done, micro-batches done in the next one, global step),
  best metric (null before any evaluation), seed, every rank's RNG, and the CRC32 of the
  .pdparams/.pdopt(/.pdema) it belongs to, and the EMA update count.
- .pdema (EMA on): the EMA weights as a plain fp32 model state dict, the .pdparams keys (see
  ema.py), so it loads wherever a .pdparams does. Optional: a set is complete with the files
  its .pdstates lists.
Saving writes all three to temporary files first, keeps a hard-linked backup of the previous
set, renames the new files in (.pdstates last), fsyncs the directory so the renames survive a
power loss, then drops the backup. Loading checks the CRCs: a set torn by a crash between renames
is detected and the backup is used instead.
"""
import glob
import json
import os
import re
import zlib

import paddle

from ..errors import ConfigError, TrainingError
from ..optim.lr import schedule_change, schedule_record
from ..weights import load_pickle, save_pickle
from . import distributed, rng, sharding
from . import ema as ema_lib

EXTS = (".pdparams", ".pdopt", ".pdstates")  # every set has these
EMA_EXT = ".pdema"  # sets written with EMA on also have this one
STATES_FORMAT = "plsc-states-1"


# The only two places that (un)pickle checkpoint files. Reading is weights-only (plsc.weights'
# restricted unpickler): a checkpoint handed to us cannot run code.
def _dump(obj, path):
    save_pickle(obj, path)


def _load(path, source):
    return load_pickle(path, source)


def _fsync_file(path):
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def _fsync_dir(directory):
    """Make renames inside `directory` durable (a rename lives in the directory's data)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_states(states, path):
    with open(path, "w") as f:
        json.dump(states, f)


def load_states(prefix):
    """The .pdstates dict (JSON written by plsc)."""
    with open(strip_prefix(prefix) + ".pdstates") as f:
        return json.load(f)


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


def optimizer_state(optimizer, model, world=distributed.World(), dp_model=None):
    """Optimizer state keyed by structured names (`blocks.0.attn.qkv.weight_moment1_0`), whole
    on rank 0: under ZeRO sharding every rank's shard is gathered there (a collective; the other
    ranks get {}), so the .pdopt does not depend on the sharding or world size that wrote it.
    `dp_model`: the model as trained (ZeRO stage 3 keeps how it sliced the state there)."""
    to_struct = {p.name: n for n, p in model.named_parameters()}
    return _rename_keys(sharding.gather_state_dict(optimizer, world, dp_model), to_struct)


def load_optimizer_state(optimizer, model, state, dp_model=None, world=distributed.World()):
    """The inverse of optimizer_state(); a sharded rank keeps its shard's entries only."""
    to_paddle = {n: p.name for n, p in model.named_parameters()}
    sharding.set_state_dict(optimizer, _rename_keys(state, to_paddle), dp_model, world)


def write_set(directory, prefix, objs, states):
    """Atomically replace the set `directory/prefix` with `objs` ({ext: obj}) + `states`."""
    os.makedirs(directory, exist_ok=True)
    base = os.path.join(directory, prefix)
    # Only rank 0 writes, so any other `.tmp-*` of this prefix is left by a process that was
    # killed mid-write (its `finally` never ran): remove it rather than let it pile up.
    for stale in glob.glob(glob.escape(base) + ".tmp-*"):
        os.remove(stale)
    tmp = f"{base}.tmp-{os.getpid()}"
    try:
        _write_set(directory, base, tmp, objs, states)
    except OSError as e:  # disk full, no permission: the old set stays as it was (see above)
        raise TrainingError(f"cannot save checkpoint to {base}: "
                            f"{e.strerror or e}") from e
    finally:
        for path in glob.glob(glob.escape(tmp) + "*"):
            os.remove(path)
    return base


def _write_set(directory, base, tmp, objs, states):
    bak = _backup_prefix(base)
    for ext, obj in objs.items():
        _dump(obj, tmp + ext)
        _fsync_file(tmp + ext)
    states = dict(states, files={ext: _crc(tmp + ext) for ext in objs})
    _write_states(states, tmp + ".pdstates")
    _fsync_file(tmp + ".pdstates")
    exts = list(objs) + [".pdstates"]
    if all(os.path.exists(base + e) for e in EXTS):
        for ext in EXTS + (EMA_EXT,):  # the old set stays reachable until the new one is complete
            if os.path.exists(base + ext):
                os.link(base + ext, tmp + ".bak" + ext)
                os.replace(tmp + ".bak" + ext, bak + ext)
    for ext in exts:
        os.replace(tmp + ext, base + ext)
        # test-only: die between the renames of the save at this step (tests/test_preemption.py)
        kill_at = f"{os.path.basename(base)}:{states.get('global_step')}"
        if os.environ.get("PLSC_TEST_KILL_IN_SAVE") == kill_at:
            os.kill(os.getpid(), 9)
    if EMA_EXT not in objs and os.path.exists(base + EMA_EXT):
        os.remove(base + EMA_EXT)  # of an older set of this prefix: not this set's EMA weights
    _fsync_dir(directory)
    remove(bak)


def strip_prefix(path):
    for ext in EXTS + (EMA_EXT,):
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
    except (ValueError, UnicodeDecodeError, AttributeError):  # truncated or not plsc JSON
        return f"{prefix}.pdstates is unreadable (not a complete plsc states file)"
    for ext, crc in files.items():
        if not os.path.isfile(prefix + ext):
            return f"{prefix + ext} not found (listed in {prefix}.pdstates)"
        if _crc(prefix + ext) != crc:
            return f"{prefix + ext} does not belong to {prefix}.pdstates (torn save)"
    return None


def load_resume(prefix, log=None):
    """Read a full checkpoint set for resuming; a torn set falls back to its backup.
    Returns (model state, .pdopt dict, states dict)."""
    return read_set(resume_prefix(prefix, log))


def resume_prefix(prefix, log=None):
    """The complete set to resume from: `prefix`, or its backup when `prefix` is torn."""
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
    return prefix


def read_set(prefix):
    """(model state, .pdopt dict, states dict) of a complete set (see resume_prefix)."""
    return (_load(prefix + ".pdparams", "Global.checkpoint"), _load(prefix + ".pdopt", "Global.checkpoint"),
            load_states(prefix))


def read_ema(prefix, states):
    """The set's EMA weights ({name: array}), or None when it was written without EMA."""
    if EMA_EXT not in states.get("files", {}):
        return None
    return _load(prefix + EMA_EXT, "Global.checkpoint")


def epoch_checkpoints(directory):
    """Existing epoch_N prefixes, oldest first."""
    found = []
    for path in glob.glob(os.path.join(directory, "epoch_*.pdparams")):
        m = re.search(r"epoch_(\d+)\.pdparams$", path)
        if m:
            found.append((int(m.group(1)), strip_prefix(path)))
    return [p for _, p in sorted(found)]


def remove(prefix):
    for ext in EXTS + (EMA_EXT,):
        if os.path.exists(prefix + ext):
            os.remove(prefix + ext)


# ------------------------------------------------------------ what a training checkpoint holds
def capture(t):
    """({ext: obj}, states) of trainer `t`. A collective: every rank's RNG is gathered."""
    s = t.state
    states = {"format": STATES_FORMAT, "epoch": s.epoch, "micro_in_epoch": s.micro_in_epoch,
              "global_step": s.global_step, "best_top1": s.best_top1, "best_epoch": s.best_epoch,
              "seed": t.ctx.seed, "world_size": t.ctx.world.size,
              "accum_steps": t.optim.accum_steps,
              "lr_schedule": schedule_record(t.lr_scheduler),
              "rng": distributed.gather_objects(rng.get_state(), t.ctx.world)}
    optimizer, world = t.optim.optimizer, t.ctx.world
    with sharding.whole_weights(t.dp_model, optimizer, world):  # stage 3: gathered (collective)
        params = fp32_state_dict(t.model)
    objs = {".pdparams": params,
            ".pdopt": {"optimizer": optimizer_state(optimizer, t.model, world, t.dp_model),
                       "lr_scheduler": t.lr_scheduler.state_dict(),
                       "scaler": t.optim.scaler_state()}}
    states["best_weights"] = t.cfg.EMA.best_model if t.ema is not None else "raw"
    if t.ema is not None:
        objs[EMA_EXT] = {**objs[".pdparams"], **ema_lib.shadow_arrays(t.ema)}
        states["ema_updates"] = t.ema.updates
    return objs, states


def restore(t, loaded, source):
    """Put what capture() saved back into trainer `t` (built with the checkpoint's seed)."""
    params, opt, st = loaded
    optimizer, world = t.optim.optimizer, t.ctx.world
    # stage 3: every rank cuts its slices of the whole weights and optimizer state
    sharding.assign_weights(t.model, params, source, t.dp_model, optimizer, world)
    load_optimizer_state(optimizer, t.model, opt["optimizer"], t.dp_model, world)
    if opt.get("lr_scheduler"):
        t.lr_scheduler.set_state_dict(opt["lr_scheduler"])
        note = schedule_change(st.get("lr_schedule"), opt["lr_scheduler"].get("last_lr"),
                               t.lr_scheduler)
        if note:
            t.ctx.logger.warning(note)
    t.optim.load_scaler_state(opt.get("scaler"))
    s = t.state
    s.epoch, s.micro_in_epoch, s.global_step = st["epoch"], st["micro_in_epoch"], st["global_step"]
    s.best_top1, s.best_epoch = st["best_top1"], st["best_epoch"]
    if st["world_size"] == world.size:
        rng.set_state(st["rng"][world.rank])
    else:
        t.ctx.logger.warning(f"checkpoint was written by {st['world_size']} processes, now "
                             f"{world.size}: data order is kept, RNG streams re-seeded")
        rng.seed_everything(t.ctx.seed + world.rank + s.global_step)


def restore_ema(t, ema_state, st, source):
    """The EMA part of restore(): the shadow and its update count from the set's .pdema. A set
    without one (written with EMA off) starts the shadow from the restored weights."""
    log = t.ctx.logger
    if t.ema is None:
        if ema_state is not None:
            log.warning(f"{source} holds EMA weights but EMA is off (no EMA.decay): they are "
                        "not carried on")
    elif ema_state is None:
        log.warning(f"{source} has no EMA weights ({EMA_EXT}): the EMA starts from the resumed "
                    "weights")
    else:
        ema_lib.load(t.ema, ema_state, st.get("ema_updates", 0), f"{source}{EMA_EXT}")
    best_weights = t.cfg.EMA.best_model if t.ema is not None else "raw"
    if st.get("best_weights", "raw") != best_weights and t.state.best_top1 is not None:
        log.warning(f"{source} chose best_model by the {st.get('best_weights', 'raw')} weights, "
                    f"this run by the {best_weights} ones: the best top1 starts over")
        t.state.best_top1, t.state.best_epoch = None, None


def save(t, prefix):
    """Write trainer `t`'s checkpoint set `prefix` (every rank calls; rank 0 writes)."""
    objs, states = capture(t)  # a collective: every rank takes part
    if t.ctx.world.is_main:
        write_set(t.ctx.out_dir, prefix, objs, states)
        t.ctx.logger.info(f"saved {os.path.join(t.ctx.out_dir, prefix)}")
    distributed.barrier(t.ctx.world)
