"""The one table the selftest prints: check, result, figure, and what was compared (for a SKIP,
why it did not run)."""
import paddle

from . import hardware
from .result import FAIL, PASS, SKIP


def environment():
    build = "CUDA build" if paddle.is_compiled_with_cuda() else "CPU build"
    n = hardware.gpu_count()
    where = f"{n} x {hardware.device_name()}" if n else "no GPU"
    return f"plsc selftest: Paddle {paddle.__version__} ({build}), {where}"


def summary(results, seconds):
    counts = {s: sum(r.status == s for r in results) for s in (PASS, FAIL, SKIP)}
    return (f"{counts[PASS]} passed, {counts[FAIL]} failed, {counts[SKIP]} skipped "
            f"in {seconds:.0f} s")


def format_table(results, seconds):
    head = ("check", "result", "figure", "details / reason")
    rows = [(r.name, r.status, r.figure or "-", r.note) for r in results]
    widths = [max(len(row[i]) for row in [head, *rows]) for i in range(3)]
    line = lambda row: "  ".join(  # noqa: E731
        [c.ljust(w) for c, w in zip(row[:3], widths)] + [row[3]]).rstrip()
    rule = "-" * (sum(widths) + 6 + 16)
    return "\n".join([environment(), rule, line(head), rule, *map(line, rows), rule,
                      summary(results, seconds)])
