"""Training engine, split by responsibility:

context.py (run setup) -> build.py (components from the config) -> loop.py (run / run_epoch /
run_iter) with optim_wrapper.py (one optimizer step: precision, accumulation, clipping,
skipping), evaluator.py, checkpoint.py (what a checkpoint holds, atomic writes, restore),
rng.py, amp.py, distributed.py, logger.py.

Entry points: `train(cfg) -> summary dict`, `evaluate(cfg) -> metrics dict`; `build_trainer(cfg)`
and `run(trainer)` when the Trainer itself is wanted (tests, tools).
"""
from .build import Trainer, build_trainer  # noqa: F401
from .evaluator import evaluate  # noqa: F401
from .loop import run, train  # noqa: F401
