"""Known-harmless output of Paddle, silenced where it is made; everything else still prints.

The tools call `before_paddle_import()` then `import_paddle()` (plsc/cli/common.py) so a user sees
plsc's lines and real problems only. What is silenced, and why it is harmless:

- `UserWarning: No ccache found` (paddle.utils.cpp_extension, at import): ccache only speeds up
  compiling custom C++ operators; plsc compiles none. A warnings filter for that message only.
- glog INFO lines such as `I... tcp_store.cc] create libuv server` / `Successfully connected`
  (the store that paddle.distributed starts): progress notes, not problems. GLOG_minloglevel=1
  drops glog INFO only; W/E lines still print. A GLOG_minloglevel the user set wins.
- `WARNING: OMP_NUM_THREADS set to N, not 1 ... fail if ... compiled with OpenBlas` (printed by
  `import paddle` when OMP_NUM_THREADS > 1): about OpenBLAS builds. Dropped only when this Paddle
  uses MKL (paddle.version.with_mkl), where several threads are right.
- The `Modified FLAGS detected` banner of paddle.distributed.init_parallel_env lists flags whose
  value differs from the default; FLAGS_enable_pir_in_executor is set by `import paddle` itself
  (it switches to PIR), so it is listed in every run. Only that flag is dropped from the banner;
  flags a user sets still show.
- `W... eager_utils.cc] Paddle static graph(PIR) not support input out tensor for now!!!!!`
  (Paddle's C++ during paddle.jit.save): internal; the exported model is verified equal to the
  dygraph one (tools/export.py --check). Filtered from stderr around that call only
  (plsc/apis/exported.py).
"""
import contextlib
import io
import os
import sys
import tempfile
import warnings

PADDLE_SET_FLAGS = frozenset({"FLAGS_enable_pir_in_executor"})
OMP_WARNING = ("WARNING: OMP_NUM_THREADS set to", "PLEASE USE OMP_NUM_THREADS WISELY.")
JIT_SAVE_NOISE = ("not support input out tensor for now",)


def before_paddle_import():
    """Settings Paddle reads when it is imported (harmless to call later: then no effect)."""
    os.environ.setdefault("GLOG_minloglevel", "1")
    warnings.filterwarnings("ignore", message="No ccache found", category=UserWarning)
    # Global.to_static: building the training program, Paddle's dy2static reads `place` of its
    # own graph values and warns that pir values have none (it then uses the current device);
    # the warning names no user code and the program is correct (tests/test_speed_paths.py).
    warnings.filterwarnings("ignore", message="Tensor do not have 'place' interface for pir",
                            category=UserWarning)


def _write_kept(text, drop):
    for line in text.splitlines(keepends=True):
        if not any(fragment in line for fragment in drop):
            sys.stderr.write(line)
    sys.stderr.flush()


def import_paddle():
    """`import paddle` without the known-harmless lines above; returns the module."""
    before_paddle_import()
    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured):
            import paddle
    finally:
        mkl = getattr(sys.modules.get("paddle.version"), "with_mkl", "") == "ON"
        _write_kept(captured.getvalue(), OMP_WARNING if mkl else ())
    _filter_flags_banner()
    return paddle


def _filter_flags_banner():
    parallel = sys.modules.get("paddle.distributed.parallel")
    original = getattr(parallel, "_print_modified_flags", None)
    if original is None or getattr(original, "plsc_filtered", False):
        return

    def print_modified_flags(flags):
        original([f for f in flags if getattr(f, "name", None) not in PADDLE_SET_FLAGS])

    print_modified_flags.plsc_filtered = True
    parallel._print_modified_flags = print_modified_flags


@contextlib.contextmanager
def drop_stderr_lines(fragments):
    """Run the block with file descriptor 2 captured (C++ glog writes there), then pass every
    line on except those containing one of `fragments`."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            _write_kept(tmp.read().decode("utf-8", "replace"), fragments)
