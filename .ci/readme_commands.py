"""The README's runnable commands: the fenced blocks marked `<!-- ci: run -->`.

    python .ci/readme_commands.py          # list them
    python .ci/readme_commands.py --run    # run them as written, in order; stop at the first failure

`.ci/run` runs them after the tests, so the quick start and its "Then try" lines are executed
verbatim on a clean clone; tests/test_readme.py checks that they name existing files and valid
keys without running them.
"""
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MARK = "<!-- ci: run -->"


def blocks(text):
    """[(title, [command, ...]), ...] for every marked fenced block; title = nearest heading."""
    lines = text.splitlines()
    found, heading, i = [], "", 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("#"):
            heading = line.lstrip("#").strip()
        if line.strip() == MARK:
            start = i + 1
            if start >= len(lines) or not lines[start].startswith("```"):
                raise ValueError(f"README line {i + 1}: {MARK} must be followed by a ``` block")
            end = start + 1
            while end < len(lines) and not lines[end].startswith("```"):
                end += 1
            commands = [c for c in lines[start + 1:end] if c.strip() and not c.startswith("#")]
            found.append((heading, commands))
            i = end
        i += 1
    return found


def readme_blocks(path=os.path.join(ROOT, "README.md")):
    with open(path, encoding="utf-8") as f:
        return blocks(f.read())


def main(argv):
    run = "--run" in argv
    for title, commands in readme_blocks():
        for command in commands:
            print(f"[{title}] $ {command}", flush=True)
            if not run:
                continue
            start = time.monotonic()
            code = subprocess.call(["bash", "-euo", "pipefail", "-c", command], cwd=ROOT)
            print(f"[{title}] exit {code} after {time.monotonic() - start:.0f} s", flush=True)
            if code:
                return code
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
