"""Thin wrapper: the implementation is plsc.cli.model_info (also installed as plsc-model-info)."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from plsc.cli.model_info import main  # noqa: E402

if __name__ == "__main__":
    main()
