"""Modules stay small and functions short, or say why not (docs/design.md, the module map).

A production module (``scanqueue/`` and ``workers/``) holds at most ``MAX_MODULE_LINES``
lines unless ``LARGE_MODULES`` names it with a reason; a function of any module holds at
most ``MAX_FUNCTION_LINES`` lines unless the comment right above its ``def`` (or its
decorators) starts with ``# shape:`` and says why. The emulator (``scanqueue/sim/``) is held to the
function rule; its modules mirror kube-apiserver's and are listed with their reasons.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MAX_MODULE_LINES = 550  # "about 500"
MAX_FUNCTION_LINES = 80

#: Modules allowed past MAX_MODULE_LINES, and why.
LARGE_MODULES = {
    "scanqueue/sim/cluster.py": (
        "kube-apiserver's storage semantics on one lock and one event log: create, replace, "
        "patch, delete and list share the resourceVersion counter, the watch window and the "
        "owner index (request-body checks, admission, patch and selectors are modules of "
        "their own: bodies, admission, patch, selectors)"
    ),
    "scanqueue/sim/scenario.py": (
        "the scenario file's schema, one builder per workload kind, and the applier"
    ),
    "scanqueue/sim/server.py": (
        "kube-apiserver's URL layout: routing, discovery documents, the verbs, logs, watch"
    ),
}


def _modules() -> list[Path]:
    return sorted([*(ROOT / "scanqueue").rglob("*.py"), *(ROOT / "workers").rglob("*.py")])


def _relative(path: Path) -> str:
    return str(path.relative_to(ROOT))


def long_functions(path: Path) -> list[str]:
    """``name:line (N lines)`` of each function over the limit without a ``# shape:`` reason."""
    source = path.read_text(encoding="utf-8")
    lines = source.splitlines()
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        length = (node.end_lineno or node.lineno) - node.lineno + 1
        if length <= MAX_FUNCTION_LINES:
            continue
        first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
        comment = []  # the comment block right above the def (or its decorators)
        index = first - 2
        while index >= 0 and lines[index].strip().startswith("#"):
            comment.append(lines[index].strip())
            index -= 1
        if not any(line.startswith("# shape:") for line in comment):
            found.append(f"{node.name}:{node.lineno} ({length} lines)")
    return found


def test_production_modules_stay_under_the_size_limit() -> None:
    large = {
        _relative(p): n
        for p in _modules()
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES
    }
    unexplained = {name: n for name, n in large.items() if name not in LARGE_MODULES}
    assert not unexplained, (
        f"modules over {MAX_MODULE_LINES} lines: {unexplained}; split them along their seams "
        "(docs/design.md) or add them to LARGE_MODULES with the reason"
    )
    stale = sorted(set(LARGE_MODULES) - set(large))
    assert not stale, f"LARGE_MODULES lists modules that are small now: {stale}"


@pytest.mark.parametrize("path", _modules(), ids=_relative)
def test_functions_are_short_or_say_why(path: Path) -> None:
    found = long_functions(path)
    assert not found, (
        f"{_relative(path)}: functions over {MAX_FUNCTION_LINES} lines without a "
        f"'# shape:' reason above them: {found}"
    )


def test_the_function_rule_can_fail(tmp_path: Path) -> None:
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    module = tmp_path / "long.py"
    module.write_text(f"def long():\n{body}\n")
    assert long_functions(module) == [f"long:1 ({MAX_FUNCTION_LINES + 1} lines)"]
    module.write_text(f"# shape: a table of cases, one per line\ndef long():\n{body}\n")
    assert long_functions(module) == []
