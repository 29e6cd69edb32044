"""Thin wrapper: the implementation is plsc.cli.export (also installed as plsc-export)."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from plsc.cli.export import main  # noqa: E402

if __name__ == "__main__":
    main()
