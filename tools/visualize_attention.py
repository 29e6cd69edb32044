"""Thin wrapper: the implementation is plsc.cli.visualize_attention (also installed as plsc-visualize-attention)."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from plsc.cli.visualize_attention import main  # noqa: E402

if __name__ == "__main__":
    main()
