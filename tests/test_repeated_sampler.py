"""RepeatedAugSampler (DeiT's repeated augmentation) against its definition written out here:
the epoch's repeated order from (seed, epoch) only, rank r striding it, DeiT's epoch length; and
end to end: 2 processes == 1 process with the doubled batch, resume == uninterrupted."""
import os

import numpy as np
import paddle
import pytest

from plsc.data import RepeatedAugSampler
from plsc.errors import ConfigError
from plsc.registry import SAMPLERS
from tiny import run_tool, tiny_config, worker_logs


class Sized:
    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n


def make(n, batch_size, rank=0, world_size=1, **kw):
    return RepeatedAugSampler(Sized(n), batch_size, rank=rank, world_size=world_size, seed=5,
                              **kw)


def rank_batches(n, batch_size, world_size, epoch=0, **kw):
    """[rank][step] -> list of (index, seed)."""
    out = []
    for r in range(world_size):
        s = make(n, batch_size, r, world_size, **kw)
        s.set_epoch(epoch)
        out.append([list(b) for b in s])
    return out


def deit_per_rank(n, world_size):
    """DeiT's RASampler: floor(len // 256 * 256 / world) samples per rank (all of a dataset
    smaller than 256, where DeiT's rule would give none)."""
    return (n // 256 * 256 if n >= 256 else n) // world_size


def repeated_order(n, epoch, repeats=3):
    """The epoch's global order: a permutation from (seed, epoch) only, each index `repeats`
    times in a row."""
    return np.repeat(np.random.default_rng([5, epoch]).permutation(n), repeats)


@pytest.mark.parametrize("n, world_size", [(100, 1), (300, 2), (1000, 3), (2000, 8), (50, 3)])
def test_epoch_length_is_deits(n, world_size):
    per_rank = deit_per_rank(n, world_size)
    for r in range(world_size):
        s = make(n, 7, r, world_size)
        got = sum(len(b) for b in s)
        assert got == per_rank and len(s) == -(-per_rank // 7)
        assert len(make(n, 7, r, world_size, drop_last=True)) == per_rank // 7


def test_imagenet_epoch_is_deits_1251_steps_of_128_on_8_devices():
    s = RepeatedAugSampler(Sized(1281167), 128, rank=3, world_size=8)
    assert s.samples_per_rank() == 160128 and len(s) == 1251


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_ranks_stride_the_global_order_and_union_is_the_one_process_batch(world_size):
    n, B, epoch = 300, 5, 2
    rep = repeated_order(n, epoch)
    per_rank = deit_per_rank(n, world_size)
    ranks = rank_batches(n, B, world_size, epoch)
    single = rank_batches(n, B * world_size, 1, epoch)[0]
    for r, batches in enumerate(ranks):  # rank r's stream is rep[r::W], as in DeiT
        stream = [i for b in batches for i, _ in b]
        assert stream == rep[r::world_size][:per_rank].tolist()
    full_steps = per_rank // B
    for k in range(full_steps):
        union = sorted(x for r in range(world_size) for x in ranks[r][k])
        assert union == sorted(single[k])  # same indices AND the same augmentation seeds
        assert [i for i, _ in single[k]] == rep[k * B * world_size:(k + 1) * B * world_size].tolist()


def test_copies_go_to_different_ranks_with_different_seeds():
    n, world_size = 90, 3  # an epoch of 90 positions: 30 samples x 3 copies
    ranks = rank_batches(n, 4, world_size, epoch=1)
    where = {}
    for r, batches in enumerate(ranks):
        for b in batches:
            for i, seed in b:
                where.setdefault(i, []).append((r, seed))
    assert len(where) == 30
    for i, copies in where.items():
        assert len(copies) == 3
        assert len({r for r, _ in copies}) == 3, f"copies of {i} share a rank"
        assert len({s for _, s in copies}) == 3, f"copies of {i} share an augmentation seed"


def test_full_repeated_order_holds_each_index_num_repeats_times():
    for repeats in (1, 2, 3, 4):
        got = [i for b in make(40, 6, num_repeats=repeats, shuffle=False) for i, _ in b]
        assert got == np.repeat(np.arange(40), repeats)[:40].tolist()
    # a dataset of 3 x 256: the epoch is 768 positions = each of the first 256 samples 3 times
    counts = np.bincount([i for b in make(768, 64) for i, _ in b], minlength=768)
    assert sorted(set(counts.tolist())) == [0, 3] and (counts == 3).sum() == 256


def test_seeds_do_not_depend_on_world_size_and_change_with_epoch():
    def seeds(world_size, epoch):
        out = {}
        for batches in rank_batches(150, 5, world_size, epoch):  # 150 = 50 per rank of 3
            for b in batches:
                for i, s in b:
                    out.setdefault(i, []).append(s)
        return {i: sorted(s) for i, s in out.items()}

    one, three = seeds(1, 0), seeds(3, 0)
    assert one == three
    other = seeds(1, 1)
    assert not set(s for v in one.values() for s in v) & set(s for v in other.values() for s in v)


def test_resume_after_k_batches_yields_exactly_the_rest():
    full = rank_batches(300, 8, 2, epoch=3)[1]
    s = make(300, 8, 1, 2)
    s.set_epoch(3)
    s.set_start_iter(5)
    assert [list(b) for b in s] == full[5:]
    assert [list(b) for b in s] == full  # the skip applies to one pass only


def test_same_interface_keys_as_distributed_batch_sampler():
    keys = set(SAMPLERS.parameters("RepeatedAugSampler"))
    assert keys == set(SAMPLERS.parameters("DistributedBatchSampler")) | {"num_repeats"}
    s = make(300, 8)
    assert all(hasattr(s, a) for a in ("set_epoch", "set_start_iter", "batch_size"))


@pytest.mark.parametrize("n, B, W, drop_last, message", [
    (2, 1, 3, False, r"^RepeatedAugSampler: 2 samples make an epoch of 0 per device on 3 "),
    (10, 8, 2, True, r"^RepeatedAugSampler: 10 samples make an epoch of 5 per device on 2 "
                     r"device\(s\), no batch of 8 \(drop_last\): lower the batch size$"),
])
def test_empty_epoch_is_one_config_error(n, B, W, drop_last, message):
    with pytest.raises(ConfigError, match=message):
        make(n, B, 0, W, drop_last=drop_last)


def test_eval_split_is_refused():
    with pytest.raises(ConfigError, match="use DistributedBatchSampler for DataLoader.Eval"):
        RepeatedAugSampler(Sized(10), 2, split="eval")


# ---------------------------------------------------------------- end to end (tools/train.py)
RA = {"DataLoader.Train.sampler": {"name": "RepeatedAugSampler", "batch_size": 4,
                                   "drop_last": True, "shuffle": True}}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return tmp_path_factory.mktemp("shapes")


def weights(run_dir):
    state = paddle.load(os.path.join(str(run_dir), "out/VisionTransformer/latest.pdparams"))
    return {k: np.asarray(v, dtype=np.float64) for k, v in state.items()}


def max_diff(a, b):
    assert a.keys() == b.keys()
    return max(float(np.abs(a[k] - b[k]).max()) for k in a)


def train(path, *overrides):
    from plsc.config import get_config
    from plsc.engine import build_trainer, run

    trainer = build_trainer(get_config(path, list(overrides)))
    run(trainer)
    return trainer


def config(tmp_path, data_root, batch_size, **extra):
    sampler = dict(RA["DataLoader.Train.sampler"], batch_size=batch_size)
    return tiny_config(tmp_path, data_root, batch_size=batch_size,
                       **{"DataLoader.Train.sampler": sampler, **extra})


def test_two_processes_equal_one_process_with_double_batch(tmp_path, data_root):
    steps = {"Global.max_train_step": 3}
    dp = config(tmp_path / "dp", data_root, 4, **steps)
    single = config(tmp_path / "single", data_root, 8, **steps)
    r = run_tool("train", ["-c", dp], nproc=2, log_dir=tmp_path / "logs")
    assert r.returncode == 0, r.stdout + r.stderr + worker_logs(tmp_path / "logs")
    train(single)
    assert max_diff(weights(tmp_path / "dp"), weights(tmp_path / "single")) <= 1.5e-7  # measured 3e-8
    # the sampler was really in use: the same run with DistributedBatchSampler ends elsewhere
    plain = tiny_config(tmp_path / "plain", data_root, batch_size=8, **steps)
    train(plain)
    assert max_diff(weights(tmp_path / "plain"), weights(tmp_path / "single")) > 1e-3


def test_resume_mid_epoch_equals_uninterrupted(tmp_path, data_root):
    # 32 images (< 256: the whole dataset) / batch 4 = 8 steps per epoch: stop at 3, resume to 11
    adamw = {"name": "AdamW", "weight_decay": 0.1,
             "grad_clip": {"name": "ClipGradByGlobalNorm", "clip_norm": 1.0}}
    extra = {"Model.drop_rate": 0.1, "Optimizer": adamw}
    full = config(tmp_path / "full", data_root, 4, **{"Global.max_train_step": 11, **extra})
    part = config(tmp_path / "part", data_root, 4, **{"Global.max_train_step": 3, **extra})
    e_full = train(full)
    assert e_full.steps_per_epoch == 8
    train(part)
    prefix = tmp_path / "part/out/VisionTransformer/latest"
    e_res = train(part, f"Global.checkpoint={prefix}", "Global.max_train_step=11")
    assert e_res.global_step == 11 and e_res.epoch == e_full.epoch == 1
    assert max_diff(weights(tmp_path / "full"), weights(tmp_path / "part")) == 0.0


def test_empty_epoch_stops_the_cli_with_one_line(tmp_path, data_root):
    path = config(tmp_path, data_root, 64)  # 32 images, drop_last: no batch of 64
    r = run_tool("train", ["-c", path])
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert [line for line in r.stderr.splitlines() if line.startswith("error:")] == [
        "error: RepeatedAugSampler: 32 samples make an epoch of 32 per device on 1 device(s), "
        "no batch of 64 (drop_last): lower the batch size"]
