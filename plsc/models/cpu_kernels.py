"""plsc's compiled CPU kernels (cpu_kernels.cc: GELU and scaled softmax forward and backward,
LayerNorm statistics and backward), registered as Paddle custom operators.

Built once per machine on first use (g++ against the installed Paddle's headers, ~10-20 s) into
~/.cache/plsc/cpu_kernels/<key>/ (PLSC_CACHE_DIR overrides ~/.cache/plsc), where the key covers
the source, the flags, the Paddle and Python versions and the CPU's instruction-set flags
(-march=native: a cache shared between different machines never hands one the other's build).
The library is written under a temporary name and renamed into place, so processes that build
at the same time (ranks of one launch) each end with a complete file. Later processes only
register the library (milliseconds).

Used for CPU float32 dygraph training only (cpu_ops.py decides). When no compiler is found or
the build fails, training goes on with Paddle's own kernels after one warning line; set
PLSC_CPU_KERNELS=0 to use Paddle's kernels without trying.
"""
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import sys
import sysconfig
import tempfile

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cpu_kernels.cc")
# -ffast-math lets GCC call glibc's vectorised erff/expf (libmvec); see cpu_kernels.cc.
CXXFLAGS = ["-O3", "-march=native", "-ffast-math", "-fopenmp-simd", "-pthread", "-fPIC", "-shared",
            "-std=c++17", "-w", "-DPADDLE_WITH_CUSTOM_KERNEL"]
LIB_NAME = "plsc_cpu_kernels.so"
_log = logging.getLogger("plsc")
_state = {}  # "ops": True once registered, or the reason they are not (a process-wide fact)


def _cpu_flags():
    try:
        with open("/proc/cpuinfo") as f:
            return next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return platform.processor()


def cache_dir():
    import paddle

    with open(SOURCE, "rb") as f:
        key = hashlib.sha256(f.read())
    for part in (" ".join(CXXFLAGS), paddle.__version__, sys.version, _cpu_flags()):
        key.update(part.encode())
    root = os.environ.get("PLSC_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache",
                                                             "plsc")
    return os.path.join(root, "cpu_kernels", key.hexdigest()[:16])


def _build(out_dir):
    """Compile to out_dir/LIB_NAME (atomically); returns None or the reason it failed."""
    from paddle.utils.cpp_extension.extension_utils import (find_paddle_includes,
                                                            find_paddle_libraries)

    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        return "no C++ compiler (g++) found"
    os.makedirs(out_dir, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=out_dir)
    os.close(fd)
    includes = [*find_paddle_includes(False), sysconfig.get_paths()["include"]]
    libs = find_paddle_libraries(False)
    cmd = [cxx, *CXXFLAGS, SOURCE, "-o", tmp, *[f"-I{d}" for d in includes],
           *[f"-L{d}" for d in libs], *[f"-Wl,-rpath,{d}" for d in libs], "-l:libpaddle.so"]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as e:
        os.remove(tmp)
        return f"{cxx} failed: {e}"
    if done.returncode != 0:
        os.remove(tmp)
        lines = (done.stderr or done.stdout).strip().splitlines()
        return f"{cxx} failed: {lines[-1] if lines else done.returncode}"
    os.replace(tmp, os.path.join(out_dir, LIB_NAME))
    return None


def available():
    """True when the kernels are registered in this process (building them if needed)."""
    if "ops" not in _state:
        _state["ops"] = _load()
        if _state["ops"] not in (True, "PLSC_CPU_KERNELS=0"):
            _log.warning(f"plsc's CPU kernels are not available ({_state['ops']}): CPU training "
                         f"uses Paddle's slower GELU and softmax (PLSC_CPU_KERNELS=0 silences "
                         f"this)")
    return _state["ops"] is True


def _load():
    if os.environ.get("PLSC_CPU_KERNELS", "1") == "0":
        return "PLSC_CPU_KERNELS=0"
    if not sys.platform.startswith("linux"):
        return "built on Linux only"
    from paddle.utils.cpp_extension import load_op_meta_info_and_register_op

    out_dir = cache_dir()
    lib = os.path.join(out_dir, LIB_NAME)
    if not os.path.isfile(lib):
        _log.info(f"building plsc's CPU kernels once for this machine into {out_dir} (~15 s)")
        try:
            reason = _build(out_dir)
        except OSError as e:
            reason = f"cannot write {out_dir}: {e.strerror}"
        if reason:
            return reason
    try:
        load_op_meta_info_and_register_op(lib)
    except Exception as e:  # a damaged or foreign library: say so and use Paddle's kernels
        first = next((ln.strip() for ln in str(e).splitlines() if ln.strip()), type(e).__name__)
        return f"cannot load {lib}: {first}; delete {out_dir} to rebuild"
    return True


def _dense(t):
    """The kernels index raw memory: a strided view is copied first."""
    return t if t.is_contiguous() else t.contiguous()


def _run(op, *args):
    """The registered operator `op` on args (tensors copied dense: the kernels index raw
    memory); a list of its outputs."""
    from paddle import _C_ops

    return _C_ops._run_custom_op(op, *[a if not hasattr(a, "is_contiguous") or a.is_contiguous()
                                       else a.contiguous() for a in args])


def gelu(x):
    return _run("plsc_gelu", x)[0]


def scaled_softmax(x, scale):
    """softmax(scale * x) over the last axis."""
    return _run("plsc_scaled_softmax", x, float(scale))[0]


def layer_norm_stats(x2, epsilon):
    """(mean, 1 / sqrt(var + epsilon)) of each row of x2 [N, D], each [N]."""
    return _run("plsc_layer_norm_stats", x2, float(epsilon))


def layer_norm_grad(x2, weight, mean, rstd, dy2):
    """(dx [N, D], dweight [D], dbias [D]) of LayerNorm over the rows of x2."""
    return _run("plsc_layer_norm_backward", x2, weight, mean, rstd, dy2)
