"""Build the data side of a run from one `DataLoader.Train`/`DataLoader.Eval` config section.

`build_dataloader(section_cfg, split, rank, world_size, seed)` returns a DataPipeline: the
paddle.io.DataLoader (driven by our batch sampler, so batches are identical for any num_workers),
the sampler (set_epoch / set_start_iter), the dataset, and the batch transform (Mixup/Cutmix) the
engine applies on tensors. Iterate the pipeline itself (or `iter_batches(pipeline.loader)`), not
the bare loader: a DataError raised while loading then reaches the caller as its original
one-line message instead of Paddle's "Blocking queue is killed".
"""
import traceback
from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np

from .. import errors
from ..config import check_data_split, check_dataset
from ..errors import ConfigError, DataError, PlscError
from ..registry import DATASETS, SAMPLERS
from .batch_transforms import create_batch_transform
from .transforms import create_operators

# Paddle loads batches in a background thread (and worker processes): an exception raised while
# loading kills its queue and the main thread only sees "SystemError: Blocking queue is killed".
# So the loader's dataset and collate never raise: a failure travels as a marked batch through
# the data channel and iter_batches re-raises it in the caller's thread with its one-line message.
_FAILURE = "__plsc_data_failure__"


class _Failure:
    """An exception turned into data: PlscErrors keep type and message; anything else (a bug)
    keeps its traceback text."""

    def __init__(self, exc):
        if isinstance(exc, PlscError):
            # the closest plsc.errors class (a subclass such as ImageDecodeError maps to DataError)
            self.kind = next(c.__name__ for c in type(exc).__mro__ if getattr(errors, c.__name__, None) is c)
            self.text = str(exc)
        else:
            self.kind, self.text = "", "".join(traceback.format_exception(exc))

    def as_batch(self):
        # One small array so the batch is a normal tensor list to Paddle; the string rides along
        # in the batch structure.
        return [np.zeros([1], np.float32), f"{_FAILURE}{self.kind}\n{self.text}"]

    @staticmethod
    def reraise(marked):
        kind, _, text = marked[len(_FAILURE):].partition("\n")
        cls = getattr(errors, kind, None) if kind else None
        if isinstance(cls, type) and issubclass(cls, PlscError):
            raise cls(text)
        raise RuntimeError(f"data loading failed:\n{text}")


class GuardedDataset:
    """What the DataLoader reads: the dataset, with exceptions returned as _Failure samples."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, key):
        try:
            return self.dataset[key]
        except Exception as e:  # noqa: BLE001 - re-raised in the main thread by iter_batches
            return _Failure(e)


@dataclass
class DataPipeline:
    loader: Any  # paddle.io.DataLoader
    sampler: Any  # DistributedBatchSampler (or any registered sampler)
    dataset: Any
    batch_transform: Optional[Callable] = None

    def __iter__(self):
        return iter_batches(self.loader)

    def __len__(self):
        return len(self.sampler)


def iter_batches(loader):
    """Iterate a DataLoader built by build_dataloader; a sample or batch that failed to load is
    raised here as its original exception (DataError with its one-line message)."""
    for batch in loader:
        if len(batch) == 2 and isinstance(batch[1], str) and batch[1].startswith(_FAILURE):
            _Failure.reraise(batch[1])
        yield batch


def collate(samples):
    """[(image, label)] -> [images float32 [B, ...], labels int64 [B] or float32 [B, C]]."""
    images = [np.asarray(s[0]) for s in samples]
    shapes = {im.shape for im in images}
    if len(shapes) > 1:
        shown = ", ".join("x".join(map(str, s)) for s in sorted(shapes)[:3])
        raise DataError(f"images of one batch have different shapes ({shown}); add a resize or "
                        "crop to transform_ops")
    images = np.stack(images)
    if images.dtype != np.float16:  # float16 only when NormalizeImage.output_fp16 asked for it
        images = images.astype(np.float32, copy=False)
    labels = np.stack([np.asarray(s[1]) for s in samples])
    labels = labels.astype(np.float32 if labels.ndim == 2 else np.int64, copy=False)
    return [images, labels]


def _guarded_collate(samples):
    for s in samples:
        if isinstance(s, _Failure):
            return s.as_batch()
    try:
        return collate(samples)
    except Exception as e:  # noqa: BLE001 - see _FAILURE
        return _Failure(e).as_batch()


def _worker_init(worker_id):
    # Loader workers already run in parallel: OpenCV's own thread pool would only oversubscribe.
    # 0 (run sequentially), not 1: when the parent had started the pool (any threaded cv2 call,
    # e.g. an eval pass without workers), setNumThreads(1) in the forked child waits forever
    # for pool threads that did not survive the fork.
    import cv2

    cv2.setNumThreads(0)


def build_dataset(dataset_cfg, section="dataset"):
    """Build a dataset from {name, ..., transform_ops, batch_transform_ops}; transform_ops are
    built through TRANSFORMS, batch_transform_ops are left to build_batch_transform."""
    cfg = dict(check_dataset(dataset_cfg, section))
    cfg.pop("batch_transform_ops", None)
    if "transform_ops" in cfg:
        cfg["transform_ops"] = create_operators(cfg["transform_ops"], f"{section}.transform_ops")
    return DATASETS.build(cfg, section)


def build_batch_transform(dataset_cfg, class_num=None):
    """The dataset config's batch_transform_ops as one callable, or None."""
    return create_batch_transform(dict(dataset_cfg).get("batch_transform_ops"), class_num)


def micro_batch_size(batch_size, accum_steps, where):
    """The loader's batch: PLSC's per-device batch split into accum_steps micro-batches."""
    if accum_steps == 1 or not isinstance(batch_size, int):
        return batch_size  # a missing or mistyped batch_size is reported by the sampler's check
    if batch_size % accum_steps:
        raise ConfigError(
            f"{where}.sampler.batch_size: {batch_size} is the batch per device per optimizer step "
            f"(PLSC's meaning), split into Global.accum_steps={accum_steps} micro-batches: expected "
            f"a multiple of {accum_steps}")
    return batch_size // accum_steps


def build_dataloader(section_cfg, split, rank=0, world_size=1, seed=0, class_num=None,
                     accum_steps=1):
    """DataPipeline for `DataLoader.Train` (split 'train') or `DataLoader.Eval` (split 'eval').

    class_num (e.g. Model.class_num) completes Mixup/Cutmix configs that leave it out; the
    dataset's own class_num is used otherwise. `sampler.batch_size` is PLSC's: the batch per
    device per optimizer step, so with accum_steps > 1 the loader yields micro-batches of
    batch_size / accum_steps (a PLSC YAML then trains with PLSC's global batch and memory)."""
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
    where = f"DataLoader.{split.capitalize()}"
    section_cfg = check_data_split(section_cfg, where)
    loader_cfg = section_cfg["loader"]
    dataset = build_dataset(section_cfg["dataset"], f"{where}.dataset")
    batch_transform = build_batch_transform(section_cfg["dataset"],
                                            class_num if class_num is not None else dataset.class_num)
    sampler_cfg = dict(section_cfg["sampler"])
    sampler_cfg["batch_size"] = micro_batch_size(sampler_cfg.get("batch_size"), accum_steps, where)
    sampler = SAMPLERS.build(sampler_cfg, f"{where}.sampler", dataset=dataset,
                             rank=rank, world_size=world_size, seed=0 if seed is None else seed,
                             split=split)
    import paddle  # here, so that plsc.data (datasets, synthetic generation) works without it

    num_workers = loader_cfg["num_workers"]
    loader = paddle.io.DataLoader(
        GuardedDataset(dataset), batch_sampler=sampler, num_workers=num_workers,
        use_shared_memory=loader_cfg["use_shared_memory"], collate_fn=_guarded_collate,
        return_list=True, worker_init_fn=_worker_init if num_workers > 0 else None)
    return DataPipeline(loader=loader, sampler=sampler, dataset=dataset, batch_transform=batch_transform)
