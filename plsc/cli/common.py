"""Shared command-line plumbing: the PLSC-style arguments and the error contract.

Every tool: `parser = build_parser(...)`, add its own arguments, `args = parser.parse_args(argv)`,
`cfg = config_from_args(args)`; its entry point is `run(main)`. A user mistake (PlscError)
prints one line `error: <message>` and exits with the error's exit code (2, or 3 for
TrainingError); `--debug` shows the full traceback instead. argparse errors exit 2.
"""
import argparse
import logging
import os
import sys

# `import paddle` sets OMP_NUM_THREADS=1 when it is unset, so remember the user's own setting
# now (tools import this module before paddle).
_USER_OMP_THREADS = os.environ.get("OMP_NUM_THREADS")

from ..quiet import import_paddle  # noqa: E402

import_paddle()  # first, so its known-harmless output is silenced (plsc/quiet.py)

from ..config import dump_config, get_config  # noqa: E402
from ..cpu import tune_cpu  # noqa: E402
from ..engine.distributed import launched_rank, launched_world_size  # noqa: E402
from ..engine.logger import setup_logger  # noqa: E402
from ..errors import ConfigError, PlscError  # noqa: E402

tune_cpu()  # before any tool runs a matmul


def build_parser(description, config_required=True):
    """ArgumentParser with -c/--config, -o/--override, --print-config and --debug."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("-c", "--config", required=config_required, metavar="CONFIG",
                        help="YAML config file (may name `_base_` files)")
    # "extend" + nargs="+": both `-o A=1 -o B=2` and PLSC's `-o A=1 B=2` work.
    parser.add_argument("-o", "--override", action="extend", nargs="+", default=[],
                        metavar="KEY=VALUE",
                        help="override a config value, e.g. -o Global.epochs=10 "
                             "DataLoader.Train.dataset.transform_ops.1.RandCropImage.size=192")
    parser.add_argument("--print-config", action="store_true",
                        help="print the final config (bases, overrides and defaults applied) "
                             "and exit")
    parser.add_argument("--debug", action="store_true",
                        help="show full tracebacks instead of one-line errors")
    return parser


def config_from_args(args, registries=None):
    """The validated config named by args.config + args.override (None if no -c was given).

    With --print-config, prints it as YAML and exits 0.
    """
    overrides = list(getattr(args, "override", None) or [])
    if getattr(args, "config", None) is None:
        if overrides:
            raise ConfigError("-o overrides need a config file: add -c CONFIG")
        return None
    cfg = get_config(args.config, overrides, registries=registries)
    if getattr(args, "print_config", False):
        sys.stdout.write(dump_config(cfg))
        sys.stdout.flush()
        sys.exit(0)
    return cfg


def run(main, argv=None):
    """Call `main()` with the CLI error contract; a non-zero int it returns becomes the exit code.

    `argv` (default sys.argv) is only consulted for `--debug`.
    """
    debug = "--debug" in (sys.argv if argv is None else argv)
    # Every tool logs as `[time] LEVEL: msg`, to stderr so that stdout holds its results
    # (train/eval: the engine logs to stdout and train.log). Without this, plsc's records would
    # reach the root handler `import paddle` installs, in Paddle's format.
    rank = launched_rank()
    launched = launched_world_size() > 1
    setup_logger(is_main=rank == 0, stream=sys.stderr)
    try:
        code = main()
    except PlscError as e:
        if debug:
            raise
        _fail(f"error: {e}", e.exit_code, rank, launched)
    except KeyboardInterrupt:
        if debug:
            raise
        _fail("interrupted", 130, rank, launched)
    except Exception as e:  # noqa: BLE001 - a launched rank must not hang its peers
        if debug or not launched:
            raise
        _fail(f"error: {type(e).__name__}: {e} (run with --debug for the traceback)", 1,
              rank, launched)
    if isinstance(code, int) and not isinstance(code, bool) and code:
        sys.exit(code)
    return code


def _fail(line, code, rank, launched):
    """Print the one error line and exit with `code`. A launched rank exits at once (os._exit):
    a normal exit would wait for collectives its peers never join, and Paddle's launcher tears
    the other ranks down as soon as one exits non-zero. The line names the rank, since the
    launcher shows it amid every rank's output."""
    print(f"rank {rank}: {line}" if launched else line, file=sys.stderr)
    if not launched:
        sys.exit(code)
    if rank != 0:  # rank 0's output reaches the console already; the others' only their logs
        _tell_launcher(f"rank {rank}: {line}")
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    logging.shutdown()  # flush train.log
    os._exit(code)


def _tell_launcher(line):
    """Write `line` to the launcher's own stderr (Linux: /proc/<parent>/fd/2), so the failing
    rank's reason is on the console before the peers' abort reports: the launcher otherwise
    shows the log tail of whichever rank it finds dead first, often a peer killed by the
    broken connection. Best effort: elsewhere the line is still in log/workerlog.N."""
    parent = os.getppid()
    try:
        with open(f"/proc/{parent}/cmdline", "rb") as f:
            if b"paddle.distributed.launch" not in f.read():
                return
        with open(f"/proc/{parent}/fd/2", "a") as f:
            f.write(line + "\n")
    except OSError:
        pass


def use_all_cores():
    """Let a single (non-launched) process use every CPU core; returns the thread count.

    Respects an OMP_NUM_THREADS the user exported; under paddle.distributed.launch each worker
    keeps the launcher's setting (several 1-thread workers beat one many-thread process).
    """
    if _USER_OMP_THREADS:
        return int(_USER_OMP_THREADS) if _USER_OMP_THREADS.isdigit() else None
    if launched_world_size() > 1:
        return None
    threads = os.cpu_count() or 1
    os.environ["OMP_NUM_THREADS"] = str(threads)
    core = getattr(getattr(sys.modules.get("paddle"), "base", None), "core", None)
    if hasattr(core, "set_num_threads"):  # paddle already imported (config validation does)
        core.set_num_threads(threads)
    return threads
