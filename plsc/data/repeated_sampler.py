"""RepeatedAugSampler: DeiT's repeated augmentation (RASampler, PLSC's RepeatedAugSampler) with
the same interface and N-processes-equal-one layout as DistributedBatchSampler.

The epoch's repeated order: a permutation of the dataset from `default_rng([seed, epoch])`
(identity without shuffle), each index repeated `num_repeats` (R) times in a row:
`rep[j] = perm[j // R]`, copy number `j % R`. The order depends on (seed, epoch) only.

Epoch length (DeiT's rule): E = len(dataset) rounded down to a multiple of 256, and each of the
W ranks yields floor(E / W) samples, so an epoch is about one dataset's worth of samples (about
E / R distinct images, each R times), not R datasets. Datasets of fewer than 256 samples (where
DeiT's rule gives an empty epoch) use E = len(dataset). An epoch with no batch is a ConfigError.

Layout: global batch k is `rep[k*G:(k+1)*G]` (G = batch_size * W) and rank r takes
`rep[k*G + r:(k+1)*G:W]`. So rank r's stream is `rep[r::W]` as in DeiT, the R consecutive
copies of a sample go to R different ranks (when W >= R), and the union of the ranks' step-k
batches is exactly the one-process step-k batch of size G. Only a partial last batch
(drop_last False) can differ: W ranks stop at W * floor(E / W), one process at E.

Each copy gets its own augmentation seed, from (seed, epoch, index * R + copy): independent of
the number of processes and workers, and of where training was resumed.
"""
from typing import Annotated

import numpy as np

from ..config import ge
from ..errors import ConfigError
from ..registry import SAMPLERS
from .sampler import DistributedBatchSampler, sample_seeds

EPOCH_MULTIPLE = 256  # DeiT's RASampler rounds the epoch down to a multiple of 256 samples


def epoch_samples(dataset_len):
    """E, the samples of one epoch over all ranks before the split (see the module doc)."""
    if dataset_len < EPOCH_MULTIPLE:
        return dataset_len
    return dataset_len // EPOCH_MULTIPLE * EPOCH_MULTIPLE


@SAMPLERS.register(runtime=("dataset", "rank", "world_size", "seed", "split"))
class RepeatedAugSampler(DistributedBatchSampler):
    """PLSC's sampler keys (batch_size, shuffle, drop_last) plus DeiT's num_repeats (3); the
    dataset, rank, world_size, seed and split are runtime arguments from build_dataloader.
    shuffle defaults to True as in DeiT's RASampler (repeating an unshuffled order is rarely
    wanted); PLSC's configs set it explicitly. set_epoch / set_start_iter are inherited."""

    def __init__(self, dataset, batch_size: Annotated[int, ge(1)], shuffle: bool = True,
                 drop_last: bool = False, num_repeats: Annotated[int, ge(1)] = 3, *,
                 rank: int = 0, world_size: int = 1, seed: int = 0, split: str = "train"):
        if split != "train":
            raise ConfigError("RepeatedAugSampler is a training sampler; use "
                              "DistributedBatchSampler for DataLoader.Eval")
        super().__init__(dataset, batch_size, shuffle, drop_last, rank=rank,
                         world_size=world_size, seed=seed, split=split)
        self.num_repeats = num_repeats
        if len(self) == 0:
            raise ConfigError(
                f"RepeatedAugSampler: {self.num_samples} samples make an epoch of "
                f"{self.samples_per_rank()} per device on {world_size} device(s), no batch of "
                f"{batch_size}{' (drop_last)' if drop_last else ''}: lower the batch size")

    def samples_per_rank(self):
        return epoch_samples(self.num_samples) // self.world_size

    def _perm(self):
        if not self.shuffle:
            return np.arange(self.num_samples)
        return np.random.default_rng([self.seed, self.epoch]).permutation(self.num_samples)

    def _position_batches(self):
        """This rank's batches as positions in the epoch's repeated order."""
        positions = np.arange(self.samples_per_rank()) * self.world_size + self.rank
        B = self.batch_size
        batches = [positions[i:i + B] for i in range(0, len(positions), B)]
        if batches and self.drop_last and len(batches[-1]) < B:
            batches.pop()
        return batches

    def __iter__(self):
        start, self._start_iter = self._start_iter, 0
        perm, R = self._perm(), self.num_repeats
        for pos in self._position_batches()[start:]:
            indices = perm[pos // R]
            seeds = sample_seeds(self.seed, self.epoch, indices * R + pos % R)
            yield list(zip(indices.tolist(), seeds))

    def __len__(self):
        full, rest = divmod(self.samples_per_rank(), self.batch_size)
        return full + (1 if rest and not self.drop_last else 0)
