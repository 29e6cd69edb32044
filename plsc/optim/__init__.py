"""Optimizers, learning-rate schedules and gradient clipping (registered on import)."""
from .clip import GRAD_CLIPS, ClipGradByGlobalNorm, build_grad_clip
from .lr import build_lr_scheduler
from .optimizer import build_optimizer, split_decay

__all__ = ["GRAD_CLIPS", "ClipGradByGlobalNorm", "build_grad_clip", "build_lr_scheduler",
           "build_optimizer", "split_decay"]
