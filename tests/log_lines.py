"""What the tools' output may and may not contain (tests/test_quiet.py)."""
import re

PLSC_LOG = re.compile(r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\] (INFO|WARNING|ERROR): ")
PLSC_INFO = re.compile(r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\] INFO: ")
NOISE = {
    "ccache warning": re.compile(r"No ccache found|warnings\.warn\("),
    "glog line": re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ \S+:\d+\]"),
    "OMP_NUM_THREADS warning": re.compile(r"OMP_NUM_THREADS set to|OMP_NUM_THREADS WISELY"),
    "modified FLAGS banner": re.compile(r"Modified FLAGS detected|^FLAGS\(name="),
    "jit.save warning": re.compile(r"not support input out tensor"),
    "Paddle's log format": re.compile(r"^\[[^]]*\] \[ *[A-Z]+\] \S+\.py:\d+ - "),
}


def noise(text):
    """[(kind, line)] of every known-noise line in `text`."""
    return [(kind, line) for line in text.splitlines() for kind, pattern in NOISE.items()
            if pattern.search(line)]
