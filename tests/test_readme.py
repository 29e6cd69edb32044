"""The README's commands are the ones CI runs, and they name files and keys that exist.

`.ci/run` executes the marked README blocks (quick start, "Then try") verbatim after the tests;
these checks catch a stale README without the minutes those runs take: every tool invoked
exists and accepts its arguments, every `-c`/`-o` resolves and validates (`--print-config`), and
every run-folder path agrees with the config's `Global.output_dir`/`Model.name`.
"""
import importlib.util
import os
import re
import shlex
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
CI_RUN = os.path.join(ROOT, ".ci", "run")


def _load_readme_commands():
    spec = importlib.util.spec_from_file_location(
        "readme_commands", os.path.join(ROOT, ".ci", "readme_commands.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


RC = _load_readme_commands()


def _readme_text():
    with open(README, encoding="utf-8") as f:
        return f.read()


def _section_block(text, heading):
    """The first fenced block's lines after the `## heading` line."""
    lines = text.splitlines()
    i = next(n for n, line in enumerate(lines) if line.strip() == f"## {heading}")
    start = next(n for n in range(i, len(lines)) if lines[n].startswith("```"))
    end = next(n for n in range(start + 1, len(lines)) if lines[n].startswith("```"))
    return [line for line in lines[start + 1:end] if line.strip()]


def _ci_commands():
    with open(CI_RUN, encoding="utf-8") as f:
        return [line.strip() for line in f
                if line.strip() and not line.lstrip().startswith("#")]


def test_ci_runs_the_readme_test_command_verbatim():
    (command,) = _section_block(_readme_text(), "Tests")
    assert command in _ci_commands(), (command, _ci_commands())


def test_ci_runs_the_readme_blocks_after_the_tests():
    (test_command,) = _section_block(_readme_text(), "Tests")
    lines = _ci_commands()
    run_line = next(i for i, line in enumerate(lines) if ".ci/readme_commands.py --run" in line)
    assert run_line > lines.index(test_command)


def test_marked_blocks_are_the_quick_start_and_then_try():
    found = RC.readme_blocks(README)
    titles = [title for title, _ in found]
    assert titles and all(title.startswith("Quick start") for title in titles), titles
    assert len(found) == 2 and all(commands for _, commands in found)
    (quick_start,) = found[0][1]
    assert quick_start.startswith("pip install paddlepaddle==3.3.1 -e . && ")


def test_block_parser_refuses_an_unfenced_mark():
    with pytest.raises(ValueError, match="must be followed by a ``` block"):
        RC.blocks("# t\n<!-- ci: run -->\npython x.py\n")


def _tool_invocations():
    """(tool path, its argument list) for every `tools/*.py` call in the marked blocks."""
    calls = []
    for _, commands in RC.readme_blocks(README):
        for command in commands:
            for part in command.split("&&"):
                words = shlex.split(part, comments=True)
                at = [i for i, w in enumerate(words) if w.startswith("tools/") and w.endswith(".py")]
                if at:
                    calls.append((words[at[0]], words[at[0] + 1:]))
    return calls


def _option(args, flag):
    return args[args.index(flag) + 1] if flag in args else None


def test_readme_tool_calls_exist():
    calls = _tool_invocations()
    tools = {tool for tool, _ in calls}
    assert {"tools/train.py", "tools/eval.py", "tools/export.py", "tools/predict.py"} <= tools
    for tool, _ in calls:
        assert os.path.isfile(os.path.join(ROOT, tool)), tool


def _run_folder(config):
    from plsc.config import get_config
    cfg = get_config(os.path.join(ROOT, config))
    return os.path.normpath(os.path.join(cfg.Global.output_dir, cfg.Model.name))


def test_readme_run_folder_paths_match_the_config():
    calls = _tool_invocations()
    configs = {_option(args, "-c") for _, args in calls} - {None}
    assert len(configs) == 1, configs  # the quick start and its "Then try" share one config
    folder = _run_folder(configs.pop())
    paths = [_option(args, "--model-dir") for _, args in calls]
    paths += [a.split("=", 1)[1] for _, args in calls for a in args
              if a.startswith("Global.pretrained_model=")]
    paths = [p for p in paths if p]
    assert paths
    for path in paths:
        assert os.path.normpath(path).startswith(folder + os.sep), (path, folder)


@pytest.mark.parametrize("index", range(len(_tool_invocations())))
def test_readme_tool_call_parses_and_validates(index):
    """Each call, with `--print-config` (config calls) or `--help` (the rest), exits 0: the
    options exist and every `-o` key and value validates against the schema."""
    tool, args = _tool_invocations()[index]
    if "-c" in args:
        out = subprocess.run([sys.executable, tool, *args, "--print-config"], cwd=ROOT,
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr
        for override in [a for a in args if "=" in a and not a.startswith("-")]:
            key, value = override.split("=", 1)
            leaf = key.rsplit(".", 1)[-1]
            assert f"{leaf}: {value}" in out.stdout, (override, out.stdout[-2000:])
    else:
        out = subprocess.run([sys.executable, tool, "--help"], cwd=ROOT,
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr
        for flag in [a for a in args if a.startswith("--")]:
            assert re.search(rf"(^|[\s,]){re.escape(flag)}([\s,=]|$)", out.stdout, re.M), \
                (flag, tool)
