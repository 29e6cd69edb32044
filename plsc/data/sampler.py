"""DistributedBatchSampler: batches of `(index, sample_seed)` with a layout that makes N processes
equivalent to one.

Train: the epoch order is a permutation from `default_rng([seed, epoch])`, identical on all ranks,
padded by repeating its head to a multiple of world_size (as Paddle does). Global batch k is
`order[k*B*W:(k+1)*B*W]` and rank r takes its r-th contiguous chunk, so the union of the ranks'
step-k batches is exactly the single-process step-k batch of size B*W.
Eval: dataset order, no padding: each index is seen exactly once over all ranks (the engine sums
metric counts over ranks, so eval is exact for any dataset size); the last batches may be uneven.

sample_seed depends on (seed, epoch, index) only, so augmentation does not depend on the number
of workers or processes, nor on where training was resumed.
"""
from typing import Annotated

import numpy as np

from ..config import ge
from ..registry import SAMPLERS


def _splitmix64(x):
    """SplitMix64 finalizer on a uint64 array: a cheap, well-mixed hash (wraps mod 2**64)."""
    x = np.asarray(x, dtype=np.uint64)
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def sample_seeds(seed, epoch, indices):
    """Per-sample seeds (Python ints < 2**63) from (seed, epoch, index), vectorized."""
    base = _splitmix64(_splitmix64(np.array([seed], np.uint64)) ^ np.uint64(epoch))
    mixed = _splitmix64(base ^ np.asarray(indices, dtype=np.uint64))
    return (mixed >> np.uint64(1)).tolist()


@SAMPLERS.register(runtime=("dataset", "rank", "world_size", "seed", "split"))
class DistributedBatchSampler:
    """PLSC's sampler name and keys; the dataset, rank, world_size, seed and split are runtime
    arguments from build_dataloader, never config keys."""

    def __init__(self, dataset, batch_size: Annotated[int, ge(1)], shuffle: bool = False,
                 drop_last: bool = False, *, rank: int = 0, world_size: int = 1, seed: int = 0,
                 split: str = "train"):
        if split not in ("train", "eval"):
            raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world of size {world_size}")
        self.dataset = dataset
        self.num_samples = len(dataset)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.rank = rank
        self.world_size = world_size
        self.seed = 0 if seed is None else int(seed)
        self.split = split
        self.epoch = 0
        self._start_iter = 0

    def set_epoch(self, epoch):
        self.epoch = int(epoch)

    def set_start_iter(self, start_iter):
        """Skip the first `start_iter` batches of the next pass (mid-epoch resume)."""
        self._start_iter = int(start_iter)

    def _order(self):
        n = self.num_samples
        if self.split == "eval" or not self.shuffle:
            order = np.arange(n)
        else:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(n)
        if self.split == "train" and n % self.world_size:
            total = -(-n // self.world_size) * self.world_size
            order = np.resize(order, total)  # repeats from the head, like Paddle's padding
        return order

    def _batches(self):
        """This rank's index batches for the current epoch (numpy arrays)."""
        order = self._order()
        B, W, r = self.batch_size, self.world_size, self.rank
        G = B * W
        full, rest = divmod(len(order), G)
        batches = [order[k * G + r * B:k * G + (r + 1) * B] for k in range(full)]
        if rest:
            tail = order[full * G:]
            if self.split == "eval":
                part = np.array_split(tail, W)[r]  # no padding: shares differ by at most one
                if len(part):
                    batches.append(part)
            elif not self.drop_last:
                share = rest // W  # train: padded to a multiple of W, so shares are equal
                batches.append(tail[r * share:(r + 1) * share])
        return batches

    def __iter__(self):
        start, self._start_iter = self._start_iter, 0
        for indices in self._batches()[start:]:
            seeds = sample_seeds(self.seed, self.epoch, indices)
            yield list(zip(indices.tolist(), seeds))

    def __len__(self):
        if self.split == "eval":
            return len(self._batches())
        n = -(-self.num_samples // self.world_size) * self.world_size
        full, rest = divmod(n, self.batch_size * self.world_size)
        return full + (1 if rest and not self.drop_last else 0)
