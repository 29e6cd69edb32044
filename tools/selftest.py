"""Thin wrapper: the implementation is plsc.cli.selftest (also installed as plsc-selftest)."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from plsc.cli.selftest import main  # noqa: E402

if __name__ == "__main__":
    main()
