"""Output-directory policy: what a training launch does with `Global.output_dir/Model.name`.

Decided before anything is created, identically on every rank (all ranks read the same files):
- Global.checkpoint set: resume from it (explicit wins).
- Global.auto_resume and a complete `latest` (or its save backup) in the directory: resume from
  it, after checking it was written by a compatible run (same Model section, world size,
  accumulation and per-device batch); a finished run is reported complete and nothing is done.
- the directory holds an earlier run and nothing asks to resume: refuse, unless
  Global.overwrite, which moves the old run aside to `<dir>.old-YYYYmmdd-HHMMSS` (nothing lost).
- otherwise: a fresh run.
So the same command can be relaunched blindly by a scheduler or by the launcher's restart.
"""
import os
import time
from dataclasses import dataclass
from typing import Optional

import yaml

from .. import config as config_lib
from ..errors import ConfigError
from . import checkpoint, distributed


@dataclass
class Decision:
    action: str  # "fresh", "resume", "complete"
    message: str
    checkpoint: Optional[str] = None


def run_dir(cfg):
    return os.path.join(cfg.Global.output_dir, cfg.Model.name)


def _recorded_config(out_dir):
    path = os.path.join(out_dir, "config.yaml")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return yaml.safe_load(f)


# Keys that say how a launch starts, not what it trains: a relaunch differing only in them is
# the same run and needs no new config record.
LAUNCH_KEYS = ("checkpoint", "auto_resume", "overwrite")


def current_record(cfg):
    """The config as config.yaml records it (plain dict)."""
    return yaml.safe_load(config_lib.dump_config(cfg))


def _trained(rec):
    glob_ = {k: v for k, v in (rec.get("Global") or {}).items() if k not in LAUNCH_KEYS}
    return dict(rec, Global=glob_)


def _batch(rec):
    try:
        return rec["DataLoader"]["Train"]["sampler"]["batch_size"]
    except (KeyError, TypeError):
        return None


def _check_compatible(cfg, out_dir, latest, states):
    """One-line refusal when `latest` was written by a run this config cannot continue."""
    how = (f"use a new Global.output_dir, pass -o Global.overwrite=True to move {out_dir} aside, "
           f"or resume it with the config that wrote it")
    world = distributed.launched_world_size()
    problems = []
    if states.get("world_size") != world:
        problems.append(f"world size {states.get('world_size')} (now {world})")
    if states.get("accum_steps") != cfg.Global.accum_steps:
        problems.append(f"Global.accum_steps {states.get('accum_steps')} "
                        f"(now {cfg.Global.accum_steps})")
    rec, cur = _recorded_config(out_dir), current_record(cfg)
    if rec is not None:
        if rec.get("Model") != cur.get("Model"):
            problems.append("a different Model section")
        if _batch(rec) != _batch(cur):
            problems.append(f"batch_size {_batch(rec)} (now {_batch(cur)})")
    if problems:
        raise ConfigError(f"Global.auto_resume: {latest} was written with "
                          f"{', '.join(problems)}: {how}")


def _complete(cfg, states):
    g = cfg.Global
    return states["epoch"] >= g.epochs or bool(
        g.max_train_step and states["global_step"] >= g.max_train_step)


def _auto_resume(cfg, out_dir):
    """Decision from `latest` (falling back to the save protocol's backup), or None."""
    latest = os.path.join(out_dir, "latest")
    bak = checkpoint._backup_prefix(latest)
    if not any(os.path.exists(p + ".pdstates") for p in (latest, bak)):  # .pdstates goes last
        return None
    reason = checkpoint.torn_reason(latest)
    prefix = latest
    if reason is not None:
        if checkpoint.torn_reason(bak) is not None:
            raise ConfigError(f"Global.auto_resume: {reason} and no complete backup: resume an "
                              f"epoch_N set with -o Global.checkpoint=..., or pass "
                              f"-o Global.overwrite=True to move {out_dir} aside")
        prefix = bak
    states = checkpoint.load_states(prefix)
    _check_compatible(cfg, out_dir, latest, states)
    where = f"epoch {states['epoch']}, step {states['global_step']}"
    if _complete(cfg, states):
        return Decision("complete", f"run already complete ({where}, Global.epochs="
                        f"{cfg.Global.epochs}) in {out_dir}: nothing to do")
    note = f" ({reason}; using the backup)" if reason else ""
    return Decision("resume", f"resuming from {prefix} ({where}){note}", prefix)


def _same_run_without_checkpoint(cfg, out_dir):
    """True when out_dir holds this very config's record and no checkpoint that completed a
    save (killed before or during its first save): relaunching it blindly starts over."""
    rec = _recorded_config(out_dir)
    latest = os.path.join(out_dir, "latest")
    saved = any(os.path.exists(p + ".pdstates")
                for p in (latest, checkpoint._backup_prefix(latest)))
    return (rec is not None and not saved and not checkpoint.epoch_checkpoints(out_dir)
            and _trained(rec) == _trained(current_record(cfg)))


def _previous_run(out_dir):
    return os.path.isdir(out_dir) and bool(os.listdir(out_dir))


def _move_aside(out_dir, is_main):
    stamp = time.strftime("%Y%m%d-%H%M%S")
    dest = f"{out_dir.rstrip(os.sep)}.old-{stamp}"
    n = 1
    while os.path.exists(dest):  # two overwrites in the same second
        dest = f"{out_dir.rstrip(os.sep)}.old-{stamp}-{n}"
        n += 1
    if is_main:
        os.rename(out_dir, dest)
    return dest


def decide(cfg):
    """The Decision for this launch (raises ConfigError to refuse). May move the old run aside
    (rank 0 only) when Global.overwrite asks."""
    g, out_dir = cfg.Global, run_dir(cfg)
    if g.checkpoint:
        return Decision("resume", f"resuming from {g.checkpoint} (Global.checkpoint)",
                        g.checkpoint)
    if g.auto_resume:
        found = _auto_resume(cfg, out_dir) if not g.overwrite else None
        if found is not None:
            return found
    if _previous_run(out_dir):
        if g.auto_resume and not g.overwrite and _same_run_without_checkpoint(cfg, out_dir):
            return Decision("fresh", f"no complete checkpoint in {out_dir}: starting fresh "
                            "(the run recorded there was stopped before its first save)")
        if not g.overwrite:
            raise ConfigError(f"{out_dir} already holds a run (checkpoints/config.yaml/logs): "
                              f"use a new Global.output_dir, -o Global.auto_resume=True to "
                              f"continue it, or -o Global.overwrite=True to move it aside")
        is_main = distributed.launched_rank() == 0
        dest = _move_aside(out_dir, is_main)
        return Decision("fresh", f"Global.overwrite: moved the previous run {out_dir} to {dest}; "
                        f"starting fresh")
    return Decision("fresh", f"no complete checkpoint in {out_dir}: starting fresh")


def resume_record_name(out_dir, cfg):
    """Where this launch's config is recorded: config.yaml for a new run; on resume, keep the
    recorded one (it produced the checkpoints) and write a differing config alongside as
    config.resume-<n>.yaml. None when nothing new needs recording."""
    rec = _recorded_config(out_dir)
    if rec is None:
        return "config.yaml"
    if _trained(rec) == _trained(current_record(cfg)):
        return None
    n = 1
    while os.path.exists(os.path.join(out_dir, f"config.resume-{n}.yaml")):
        n += 1
    return f"config.resume-{n}.yaml"
