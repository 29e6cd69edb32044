"""Thin wrapper: the implementation is plsc.cli.benchmark (also installed as plsc-benchmark)."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from plsc.cli.benchmark import main  # noqa: E402

if __name__ == "__main__":
    main()
