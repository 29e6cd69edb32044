"""Logging for people: one `plsc` logger (rank 0 prints and writes train.log; other ranks
only warnings), and optional VisualDL scalars."""
import datetime
import logging
import os
import sys


LOG_FORMAT = "[%(asctime)s] %(levelname)s: %(message)s"  # the one format of every plsc tool
DATE_FORMAT = "%Y-%m-%d %H:%M:%S"


def setup_logger(log_file=None, is_main=True, name="plsc", stream=None):
    """The `plsc` logger, printing to `stream` (default stdout; tools whose stdout is their
    result, such as predict, log to stderr) and, on the main rank, to `log_file`. It does not
    propagate: `import paddle` puts a handler with Paddle's own format on the root logger."""
    logger = logging.getLogger(name)
    logger.handlers.clear()
    logger.propagate = False
    logger.setLevel(logging.INFO if is_main else logging.WARNING)
    fmt = logging.Formatter(LOG_FORMAT, DATE_FORMAT)
    stream = logging.StreamHandler(stream or sys.stdout)
    stream.setFormatter(fmt)
    logger.addHandler(stream)
    if log_file and is_main:
        os.makedirs(os.path.dirname(log_file) or ".", exist_ok=True)
        fh = logging.FileHandler(log_file)
        fh.setFormatter(fmt)
        logger.addHandler(fh)
    return logger


def format_eta(seconds):
    return str(datetime.timedelta(seconds=int(max(0, seconds))))


class Scalars:
    """VisualDL scalars under {output_dir}/vdl when enabled; a no-op otherwise."""

    def __init__(self, logdir=None):
        self._writer = None
        if logdir:
            from visualdl import LogWriter  # optional heavy dependency: import only when asked

            self._writer = LogWriter(logdir=logdir)

    def add(self, tag, value, step):
        if self._writer is not None:
            self._writer.add_scalar(tag=tag, value=float(value), step=int(step))

    def close(self):
        if self._writer is not None:
            self._writer.close()


class Meter:
    """Running average over a logging window."""

    def __init__(self):
        self.total, self.count = 0.0, 0

    def update(self, value, n=1):
        self.total += float(value) * n
        self.count += n

    @property
    def avg(self):
        return self.total / max(self.count, 1)

    def reset(self):
        self.total, self.count = 0.0, 0
