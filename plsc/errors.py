"""User-facing errors: the CLIs print one line for these and exit with `exit_code`.

Anything else that escapes is a bug and keeps its traceback.
"""


class PlscError(Exception):
    """Bad input from the user (config, file, checkpoint, data)."""

    exit_code = 2


class ConfigError(PlscError):
    """A config file, override or component argument is wrong."""


class DataError(PlscError):
    """A dataset, list file, image or checkpoint file is missing or unreadable."""


class TrainingError(PlscError):
    """Training cannot continue (e.g. the loss stayed NaN)."""

    exit_code = 3
