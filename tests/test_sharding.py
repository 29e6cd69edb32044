"""ZeRO sharding (DistributedStrategy.sharding) and checkpoints portable across sharding settings.

References are independent of the sharding code: plain data parallelism and one process with the
doubled batch (equivalences), the clip norm itself (the applied gradients' global norm), and the
uninterrupted run (resume). AdamW throughout, so optimizer state matters. Observations patch
Paddle's AdamW in a launched script (RECORDER); the engine runs through tools/train.py.
"""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import paddle
import pytest

from test_engine_contract import EQUIV_TOL, latest, max_diff, run_engine, weights
from tiny import ROOT, run_tool, tiny_config, worker_logs

SHARDED = ["DistributedStrategy.sharding.sharding_stage=1",
           "DistributedStrategy.sharding.sharding_degree=2"]
# AdamW, accumulation 2 (batch_size = per-device batch per step, 2 micro-batches), no clipping,
# no warmup. epsilon 1e-4: a ViT's key bias has a gradient that is zero in exact arithmetic, and
# with epsilon 1e-8 Adam turns its float32 noise (different in 1 and 2 processes) into updates
# of ~0.07 lr (measured 7e-4 apart); with 1e-4 the runs agree to 1.2e-7 and still move 0.03.
# No random flip, so a run's data does not depend on the per-rank RNG streams (re-seeded when
# the world size changes).
ADAMW = {"Optimizer": {"name": "AdamW", "weight_decay": 0.05, "epsilon": 1e-4,
                       "grad_clip": None},
         "LRScheduler.learning_rate": 0.01, "LRScheduler.warmup_steps": 0,
         "Global.accum_steps": 2, "Global.max_train_step": 3, "Global.eval_during_train": False}
NO_FLIP = [{"DecodeImage": {"to_rgb": True}},
           {"NormalizeImage": {"scale": "1.0/255.0", "mean": [0.5, 0.5, 0.5],
                               "std": [0.5, 0.5, 0.5], "order": ""}},
           {"ToCHWImage": None}]

# Runs plsc's train CLI with paddle's AdamW patched to record, per rank: how many parameters it
# was built for, which parameters it holds moments for at exit, and per applied update the sum
# of squares of the gradients it applied. PLSC_TEST_NAN="rank:call" makes that rank's call-th
# micro-batch loss NaN in value while its gradient stays finite (one rank's loss only).
RECORDER = textwrap.dedent("""
    import atexit, json, os, sys
    import numpy as np
    import paddle

    rank = int(os.environ.get("PADDLE_TRAINER_ID", "0"))
    record = {"n_params": 0, "moments": [], "applied_sq": []}
    made = []
    real_init = paddle.optimizer.AdamW.__init__
    real_apply = paddle.optimizer.AdamW._apply_optimize

    def init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        made.append(self)
        record["n_params"] = len(self._parameter_list)

    def apply(self, loss, startup_program, params_grads, *args, **kwargs):
        sq = sum(float((g.astype("float32") ** 2).sum()) for _, g in params_grads
                 if g is not None)
        record["applied_sq"].append(sq)
        return real_apply(self, loss, startup_program, params_grads, *args, **kwargs)

    def dump():
        keys = made[0].state_dict() if made else {}
        record["moments"] = sorted(k[: -len("_moment1_0")] for k in keys
                                   if k.endswith("_moment1_0"))
        with open(f"{sys.argv_dump}.rank{rank}.json", "w") as f:
            json.dump(record, f)

    paddle.optimizer.AdamW.__init__ = init
    paddle.optimizer.AdamW._apply_optimize = apply
    sys.argv_dump = sys.argv.pop(1)
    atexit.register(dump)
    sys.path.insert(0, os.environ["PLSC_ROOT"])
    nan = os.environ.get("PLSC_TEST_NAN")
    if nan:
        from plsc.engine.optim_wrapper import OptimWrapper
        nan_rank, nan_call = map(int, nan.split(":"))
        real_update, calls = OptimWrapper.update, [0]

        def update(self, loss):
            calls[0] += 1
            if rank == nan_rank and calls[0] == nan_call:
                loss = loss + float("nan") * loss.detach()  # value NaN, gradient finite
            return real_update(self, loss)

        OptimWrapper.update = update
    from plsc.cli.train import main
    main()
""")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return tmp_path_factory.mktemp("shapes")


@pytest.fixture(scope="module")
def recorder(tmp_path_factory):
    path = tmp_path_factory.mktemp("recorder") / "record_adamw.py"
    path.write_text(RECORDER)
    return path


def config(tmp_path, data_root, batch_size=4, **extra):
    return tiny_config(tmp_path, data_root, batch_size=batch_size,
                       **dict(ADAMW, **{"DataLoader.Train.dataset.transform_ops": NO_FLIP},
                              **extra))


def launch(recorder, run_dir, path, overrides=(), env=None):
    """2 processes of tools/train.py under RECORDER; returns each rank's record."""
    dump, log_dir = run_dir / "record", run_dir / "logs"
    cmd = [sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", "2",
           "--log_dir", str(log_dir), str(recorder), str(dump), "-c", path]
    if overrides:
        cmd += ["-o", *overrides]
    env = dict(os.environ, PYTHONPATH=ROOT, PLSC_ROOT=ROOT, **(env or {}))
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr + worker_logs(log_dir)
    return [json.loads(open(f"{dump}.rank{rank}.json").read()) for rank in (0, 1)]


def train_log(run_dir):
    return open(os.path.join(str(run_dir), "out", "VisionTransformer", "train.log")).read()


# ---------------------------------------------------------------- training equivalences
@pytest.fixture(scope="module")
def unclipped(tmp_path_factory, data_root, recorder):
    """The same 3 AdamW steps as: 1 process with batch 8, 2 processes plain DP, 2 processes
    sharded (stage 1, degree 2), each batch 4 per device; and the 1-process run's start."""
    root = tmp_path_factory.mktemp("unclipped")
    run_engine(config(root / "one", data_root, batch_size=8))
    run_engine(config(root / "init", data_root, batch_size=8), "Global.max_train_step=1",
               "LRScheduler.learning_rate=0.0")
    dp = launch(recorder, root / "dp", config(root / "dp", data_root))
    sh = launch(recorder, root / "sh", config(root / "sh", data_root), SHARDED)
    return root, dp, sh


def test_sharded_equals_data_parallel_equals_one_process(unclipped):
    root, _, _ = unclipped
    one, dp, sh = weights(root / "one"), weights(root / "dp"), weights(root / "sh")
    # the same update of the same all-reduced gradients: measured bitwise equal
    assert max_diff(sh, dp) == 0.0
    assert max_diff(sh, one) <= EQUIV_TOL  # measured 1.2e-7
    # the comparison can tell: 3 AdamW steps at lr 0.01 move the weights ~0.03
    assert max_diff(sh, weights(root / "init")) > 1000 * EQUIV_TOL


def test_each_rank_holds_moments_for_its_share_only(unclipped):
    _, dp, sh = unclipped
    n = dp[0]["n_params"]
    assert n == sh[0]["n_params"] == sh[1]["n_params"] > 10
    for rank in (0, 1):  # plain DP: every rank holds the whole state
        assert len(dp[rank]["moments"]) == n
    held = [set(r["moments"]) for r in sh]
    assert held[0] and held[1] and not held[0] & held[1]  # disjoint, both non-empty
    assert held[0] | held[1] == set(dp[0]["moments"])  # together: every parameter
    assert len(held[0]) < n and len(held[1]) < n


def test_sharded_checkpoint_holds_the_whole_optimizer_state(unclipped):
    """Rank 0 writes every rank's shard: the sharded run's .pdopt is the plain DP run's, key for
    key and bitwise (structured names: the file does not depend on the sharding)."""
    root, _, _ = unclipped
    sh, dp = _pdopt(latest(root / "sh")), _pdopt(latest(root / "dp"))
    assert sh.keys() == dp.keys()
    assert sum(k.endswith("_moment1_0") for k in sh) == unclipped[1][0]["n_params"]
    for k, v in dp.items():
        if k != "LR_Scheduler":
            np.testing.assert_array_equal(sh[k], v, err_msg=k)


@pytest.fixture(scope="module")
def clipped(tmp_path_factory, data_root, recorder):
    root = tmp_path_factory.mktemp("clipped")
    clip = {"Optimizer": dict(ADAMW["Optimizer"], grad_clip={"name": "ClipGradByGlobalNorm",
                                                             "clip_norm": 0.05})}
    dp = launch(recorder, root / "dp", config(root / "dp", data_root, **clip))
    sh = launch(recorder, root / "sh", config(root / "sh", data_root, **clip), SHARDED)
    return root, dp, sh


def test_sharded_clips_by_one_global_norm(clipped, unclipped):
    root, dp, sh = clipped
    assert max_diff(weights(root / "sh"), weights(root / "dp")) == 0.0  # measured bitwise
    # unclipped, the gradients' global norm is far above the clip: the clip is active
    free = unclipped[1][0]["applied_sq"]
    assert len(free) == 3 and min(free) > (10 * 0.05) ** 2
    # the update applied over both shards (disjoint parameters) has global norm clip_norm: one
    # norm over all parameters, not one per shard (that would give sqrt(2) * 0.05)
    totals = np.sqrt(np.add(sh[0]["applied_sq"], sh[1]["applied_sq"]))
    np.testing.assert_allclose(totals, 0.05, rtol=1e-5)
    np.testing.assert_allclose(np.sqrt(dp[0]["applied_sq"]), 0.05, rtol=1e-5)
    assert max_diff(weights(root / "sh"), weights(unclipped[0] / "sh")) > 1000 * EQUIV_TOL


def test_nonfinite_loss_on_one_rank_skips_the_step_on_all(tmp_path, data_root, recorder):
    """Rank 1's 3rd micro-batch (step 2) has a NaN loss, rank 0's is finite and the gradients
    are finite on both: both ranks skip that step and apply the same 3 updates."""
    nan = {"PLSC_TEST_NAN": "1:3"}
    sh = launch(recorder, tmp_path / "sh", config(tmp_path / "sh", data_root), SHARDED, env=nan)
    dp = launch(recorder, tmp_path / "dp", config(tmp_path / "dp", data_root), env=nan)
    assert [len(r["applied_sq"]) for r in sh] == [3, 3]
    assert "update skipped" in train_log(tmp_path / "sh")
    got = weights(tmp_path / "sh")
    assert all(np.isfinite(v).all() for v in got.values())
    assert max_diff(got, weights(tmp_path / "dp")) == 0.0  # measured bitwise
    assert [len(r["applied_sq"]) for r in dp] == [3, 3]


# ---------------------------------------------------------------- refused settings
@pytest.mark.parametrize("overrides,expected", [
    (["DistributedStrategy.sharding.sharding_stage=2"],
     "DistributedStrategy.sharding.sharding_stage 2 needs a GPU build of Paddle"),
    (["DistributedStrategy.sharding.sharding_stage=3"],
     "DistributedStrategy.sharding.sharding_stage 3 needs a GPU build of Paddle "
     "(group_sharded_parallel runs on GPU/XPU only); use sharding_stage 1 on CPU"),
    (["DistributedStrategy.sharding.sharding_stage=1", "DistributedStrategy.sharding.offload=true"],
     "DistributedStrategy.sharding.offload needs sharding_stage 2"),
    (["DistributedStrategy.sharding.sharding_degree=2"],
     "DistributedStrategy.sharding.sharding_degree=2 must divide the number of processes (1)"),
    (["DistributedStrategy.sharding.sharding_stage=4"],
     "DistributedStrategy.sharding.sharding_stage"),
])
def test_refused_settings_are_one_line_exit_2(tmp_path, data_root, overrides, expected):
    r = run_tool("train", ["-c", config(tmp_path, data_root), "-o", *overrides])
    lines = [ln for ln in r.stderr.splitlines() if ln.strip() and "ccache" not in ln
             and "warnings.warn" not in ln]
    assert r.returncode == 2, r.stdout + r.stderr
    assert len(lines) == 1 and expected in lines[0], r.stderr
    assert "Traceback" not in r.stderr
    assert not os.path.exists(tmp_path / "out" / "VisionTransformer")  # nothing written


def test_cpu_refuses_sharding_sub_groups(tmp_path, data_root):
    """4 processes in 2 shards of 2 need gloo sub-groups, which Paddle fails to create: refused
    in one line before any group is made. Every rank refuses, but the launcher stops the others
    as soon as the first one exits, so how many lines reach the logs depends on timing."""
    path = config(tmp_path, data_root, batch_size=2)
    r = run_tool("train", ["-c", path, "-o", "DistributedStrategy.sharding.sharding_degree=2"],
                 nproc=4, log_dir=tmp_path / "logs")
    logs = worker_logs(tmp_path / "logs")
    assert r.returncode != 0
    expected = ("DistributedStrategy.sharding.sharding_degree=2 of 4 processes needs process "
                "sub-groups")
    assert sum(expected in line for line in logs.splitlines()) >= 1, logs
    assert "Traceback" not in logs


# ---------------------------------------------------------------- portable checkpoints
# 4 steps per epoch (32 images, 2 x 4 per step): stop after 2 (mid-epoch), resume to 6.
RESUME = {"Global.max_train_step": 6}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, data_root, recorder):
    root = tmp_path_factory.mktemp("full")
    launch(recorder, root, config(root, data_root, **RESUME), SHARDED)
    return weights(root)


@pytest.mark.parametrize("first,then", [(SHARDED, ["DistributedStrategy.sharding=null"]),
                                        ([], SHARDED)], ids=["sharded-to-dp", "dp-to-sharded"])
def test_resume_across_sharding_equals_uninterrupted(tmp_path, data_root, recorder,
                                                     uninterrupted, first, then):
    path = config(tmp_path, data_root, **RESUME)
    launch(recorder, tmp_path / "a", path, [*first, "Global.max_train_step=2"])
    part = weights(tmp_path)
    launch(recorder, tmp_path / "b", path,
           [*then, f"Global.checkpoint={latest(tmp_path)}", "Global.max_train_step=6"])
    # sharded and plain DP apply the same update (measured bitwise), so resuming across them
    # is exact, as resuming is without a change
    assert max_diff(weights(tmp_path), uninterrupted) == 0.0
    assert max_diff(part, uninterrupted) > 1000 * EQUIV_TOL  # the resume had work to do


def _pdopt(prefix):
    from plsc.weights import load_pickle

    return load_pickle(prefix + ".pdopt", "test")["optimizer"]


def test_sharded_checkpoint_resumes_in_one_process(tmp_path, data_root, recorder, uninterrupted):
    """World size 2 (sharded) -> 1 process with the doubled per-device batch, via
    Global.checkpoint (auto_resume refuses a different world size): the whole consolidated
    state loads, and training continues as the uninterrupted 2-process run."""
    from plsc.config import get_config
    from plsc.engine import build_trainer, checkpoint

    two = config(tmp_path / "two", data_root, **RESUME)
    launch(recorder, tmp_path / "two", two, [*SHARDED, "Global.max_train_step=2"])
    saved = _pdopt(latest(tmp_path / "two"))
    one = config(tmp_path / "one", data_root, batch_size=8, **RESUME)
    # the sharding section stays: degree null = all processes, here 1, so nothing to shard
    resume = [f"Global.checkpoint={latest(tmp_path / 'two')}",
              "DistributedStrategy.sharding.sharding_stage=1"]
    t = build_trainer(get_config(one, resume))
    loaded = checkpoint.optimizer_state(t.optim.optimizer, t.model)
    moments = [k for k in saved if k.endswith("_moment1_0")]
    assert len(moments) == len(list(t.model.parameters()))  # consolidated: every parameter
    assert loaded.keys() == saved.keys()
    for k in moments:
        np.testing.assert_array_equal(np.asarray(loaded[k]), saved[k], err_msg=k)
    run_engine(one, *resume)
    assert max_diff(weights(tmp_path / "one"), uninterrupted) <= EQUIV_TOL  # measured 1.2e-7
