"""What a check returns, and the tolerances it is judged by.

A check is a plain function `check(ctx) -> Result`; the figure is what was measured (a max
difference, a ratio, images/s), `note` says what was compared or, for a SKIP, why it did not run.
"""
import os
from dataclasses import dataclass

PASS, FAIL, SKIP = "PASS", "FAIL", "SKIP"

# Test-only hook (tests/test_selftest.py): every equality tolerance is multiplied by this
# factor, so a suite can make a check fail on purpose and see the tool report it. Not for users:
# a tolerance loosened here proves nothing.
TOLERANCE_SCALE_ENV = "PLSC_SELFTEST_TOLERANCE_SCALE"


@dataclass
class Result:
    name: str
    status: str  # PASS | FAIL | SKIP
    figure: str = ""  # the measured number(s), as printed
    note: str = ""  # what was compared; for SKIP the reason; for FAIL what went wrong


def skip(name, reason):
    return Result(name, SKIP, "", reason)


def tolerance(value):
    """`value` times the test-only scale (1 unless PLSC_SELFTEST_TOLERANCE_SCALE is set)."""
    return value * float(os.environ.get(TOLERANCE_SCALE_ENV, "1"))


def within(name, diff, tol, what, unit=""):
    """PASS when diff <= tol; the figure is the measured diff, the note names the bound."""
    ok = diff <= tol
    return Result(name, PASS if ok else FAIL, f"{diff:.3g}{unit}",
                  f"{what} (tolerance {tol:.3g}{unit})" if ok else
                  f"{what}: {diff:.3g} exceeds the tolerance {tol:.3g}{unit}")
