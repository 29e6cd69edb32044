"""plsc-selftest / tools/selftest.py: check this node before a long run (plsc/selftest)."""
import argparse

from .common import run

DESCRIPTION = ("Run small real checks of every precision, attention and parallel path this "
               "Paddle build and machine offer (GPU checks SKIP on a CPU build, with the "
               "reason); exit status 1 if any check fails.")


def build_parser():
    from ..selftest.runner import NAMES

    p = argparse.ArgumentParser(description=DESCRIPTION)
    p.add_argument("--only", nargs="+", choices=NAMES, metavar="CHECK",
                   help=f"run these checks only, of: {' '.join(NAMES)}")
    p.add_argument("--batch", type=int, default=None,
                   help="throughput probe micro-batch (default: the largest the memory "
                        "planner allows on this device)")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="the device's peak dense fp16 TFLOP/s for the MFU figure (default: "
                        "a built-in table of known GPUs)")
    p.add_argument("--workdir", default=None,
                   help="keep the runs' configs, checkpoints and logs here (default: a "
                        "temporary directory, removed at the end)")
    p.add_argument("--debug", action="store_true",
                   help="let a failing check raise with its traceback")
    return p


def main():
    def _main():
        args = build_parser().parse_args()
        if args.batch is not None and args.batch < 1:
            from ..errors import ConfigError

            raise ConfigError(f"--batch: expected an integer >= 1, got {args.batch}")
        if args.peak_tflops is not None and args.peak_tflops <= 0:
            from ..errors import ConfigError

            raise ConfigError(f"--peak-tflops: expected a positive number, got "
                              f"{args.peak_tflops}")
        from ..selftest.runner import main as run_selftest

        return run_selftest(args)

    run(_main)


if __name__ == "__main__":
    main()
