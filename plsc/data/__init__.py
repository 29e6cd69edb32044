"""Data pipeline: datasets, per-sample transforms, batch transforms, the sampler and the loader.

Importing this package registers every data component (DATASETS, TRANSFORMS, BATCH_TRANSFORMS,
SAMPLERS). Paddle is imported only when a DataLoader or a tensor batch transform is used.
plsc.data.synthetic (the SyntheticShapes generator and its CLI) is imported on first use.
"""
from . import autoaugment, random_erasing  # noqa: F401 - register TimmAutoAugment, RandomErasing
from .batch_transforms import Cutmix, Mixup, MixupCutmix, OpSampler, create_batch_transform
from .datasets import CIFAR10, CIFAR100, ImageFolder, ImageNetDataset, SyntheticShapes
from .loader import (DataPipeline, build_batch_transform, build_dataloader, build_dataset,
                     collate, iter_batches)
from .repeated_sampler import RepeatedAugSampler
from .sampler import DistributedBatchSampler, sample_seeds
from .transforms import apply_operators, create_operators

__all__ = [
    "CIFAR10", "CIFAR100", "Cutmix", "DataPipeline", "DistributedBatchSampler", "ImageFolder",
    "ImageNetDataset", "Mixup", "MixupCutmix", "OpSampler", "RepeatedAugSampler", "SyntheticShapes",
    "apply_operators",
    "build_batch_transform", "build_dataloader", "build_dataset", "collate",
    "create_batch_transform", "create_operators", "iter_batches",
    "sample_seeds",
]
