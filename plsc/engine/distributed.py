"""Process-group setup and the few collectives the engine needs.

Works single-process (plain `python tools/train.py`) and under `paddle.distributed.launch`,
which sets PADDLE_TRAINERS_NUM / PADDLE_TRAINER_ID for every worker (gloo on CPU, NCCL on GPU).
"""
import os
from dataclasses import dataclass

import numpy as np
import paddle
import paddle.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1

    @property
    def is_main(self):
        return self.rank == 0


def launched_world_size():
    return int(os.environ.get("PADDLE_TRAINERS_NUM") or 1)


def launched_rank():
    return int(os.environ.get("PADDLE_TRAINER_ID") or 0)


def init():
    """Join the process group when launched with more than one worker."""
    if launched_world_size() > 1:
        if not dist.is_initialized():
            dist.init_parallel_env()
        return World(dist.get_rank(), dist.get_world_size())
    return World()


def wrap_model(model, world):
    """paddle.DataParallel: broadcasts rank 0's parameters, averages gradients in backward."""
    if world.size > 1:
        return paddle.DataParallel(model)
    return model


def all_reduce_sum(values, world):
    """Sum a float64 numpy array over ranks (gloo has no AVG; SUM is exact for counts)."""
    values = np.asarray(values, dtype=np.float64)
    if world.size == 1:
        return values
    t = paddle.to_tensor(values)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.numpy()


def broadcast_int(value, world):
    """Rank 0's integer on every rank (used for a seed chosen at random)."""
    if world.size == 1:
        return int(value)
    t = paddle.to_tensor(np.array([value], dtype=np.int64))
    dist.broadcast(t, src=0)
    return int(t.numpy()[0])


def gather_objects(obj, world):
    """List of every rank's picklable `obj` (used to save each rank's RNG state)."""
    if world.size == 1:
        return [obj]
    out = []
    dist.all_gather_object(out, obj)
    return out


def broadcast_array(array, shape, dtype, src):
    """`src`'s numpy array on every rank (others pass None with its shape and dtype). Goes
    through a tensor on the current device: NCCL broadcasts device memory only."""
    t = paddle.to_tensor(array) if array is not None else paddle.zeros(shape, dtype)
    dist.broadcast(t, src=src)
    return t.numpy()


def barrier(world):
    if world.size > 1:
        dist.barrier()
