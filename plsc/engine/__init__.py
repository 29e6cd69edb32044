"""Training engine: the loop (engine.py), checkpoints, distributed setup, AMP, logging."""
from .engine import Engine  # noqa: F401
