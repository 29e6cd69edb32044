import os
import sys

# Tests run from a clean checkout without installing: make `plsc` importable from the repo root.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from plsc.cpu import tune_cpu  # noqa: E402

tune_cpu()  # the suite runs ~3x faster with the same settings the tools use


def pytest_configure(config):
    # Paddle warns at import that ccache is missing; it only matters when compiling C++
    # extensions, which plsc never does (the same filter as plsc/quiet.py, for pytest's own
    # per-test warning capture).
    config.addinivalue_line("filterwarnings", "ignore:No ccache found:UserWarning")
    # Global.to_static: Paddle's dy2static warns about its own graph values (plsc/quiet.py).
    config.addinivalue_line("filterwarnings",
                            "ignore:Tensor do not have 'place' interface for pir:UserWarning")
