"""Run on each rank by launch.py: `worker.py train -c CONFIG [-o ...]` trains through plsc's train
CLI; `worker.py scaler OUT_DIR DATA_ROOT` runs the loss-scaler check on this rank. Run as a file
(paddle.distributed.launch takes a script), so it imports plsc absolutely."""
import os
import sys

if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__)))))
    mode, rest = sys.argv[1], sys.argv[2:]
    if mode == "train":
        from plsc.cli.train import main

        sys.argv = [sys.argv[0], *rest]
        main()
    elif mode == "scaler":
        from plsc.cli import common  # noqa: F401 - Paddle's known-harmless output silenced
        from plsc.selftest.scaler import worker

        worker(*rest)
    else:
        sys.exit(f"worker.py: unknown mode '{mode}' (expected train or scaler)")
