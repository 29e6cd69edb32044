"""House rules (issue 8): every module in plsc/ and tools/ stays small enough
to hold in one's head. This test is the guard: it lists every module over
MAX_MODULE lines and every function over MAX_FUNCTION lines."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAX_MODULE = 400
MAX_FUNCTION = 60


def oversized(roots=("plsc", "tools")):
    found = []
    for name in roots:
        for path in sorted((ROOT / name).rglob("*.py")):
            text = path.read_text(encoding="utf-8")
            rel = path.relative_to(ROOT)
            lines = len(text.splitlines())
            if lines > MAX_MODULE:
                found.append(f"{rel}: module has {lines} lines (max {MAX_MODULE})")
            for node in ast.walk(ast.parse(text, filename=str(rel))):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    start = min([node.lineno] + [d.lineno for d in node.decorator_list])
                    length = node.end_lineno - start + 1
                    if length > MAX_FUNCTION:
                        found.append(f"{rel}:{node.lineno}: function {node.name} has "
                                     f"{length} lines (max {MAX_FUNCTION})")
    return found


def test_no_oversized_modules_or_functions():
    found = oversized()
    assert not found, "\n".join(found)
