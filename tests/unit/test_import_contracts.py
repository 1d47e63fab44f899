"""`make lint` enforces the layers and fails on an import cycle.

Each test copies ``scanqueue/`` and ``workers/`` into a temporary folder, plants one bad
import in the copy, and runs ``lint-imports`` with the repository's own ``setup.cfg``
against it. The untouched copy must pass, so a failure is the planted import's doing.
"""

from __future__ import annotations

import configparser
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A copy of the two packages and the contracts, code only (no emulator data)."""
    ignore = shutil.ignore_patterns("__pycache__", "data", "*.sql")
    for package in ("scanqueue", "workers"):
        shutil.copytree(ROOT / package, tmp_path / package, ignore=ignore)
    shutil.copy(ROOT / "setup.cfg", tmp_path / "setup.cfg")
    return tmp_path


def lint_imports(tree: Path) -> subprocess.CompletedProcess[str]:
    # PYTHONPATH first, so the copy shadows the editable install of the real tree.
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "setup.cfg"],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def plant(tree: Path, module: str, line: str) -> None:
    path = tree / (module.replace(".", "/") + ".py")
    if not path.exists():
        path = tree / module.replace(".", "/") / "__init__.py"
    path.write_text(path.read_text() + f"\n{line}  # planted\n")


def test_the_untouched_tree_keeps_every_contract(tree: Path) -> None:
    result = lint_imports(tree)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "0 broken" in result.stdout


# (test id, module to plant into, the planted line, what lint-imports must say)
PLANTED = [
    # collection already imports submission; both sit in the scans layer, so only the
    # cycle contract can see this
    (
        "a-cycle-inside-one-layer",
        "scanqueue.scans.submission",
        "from scanqueue.scans import collection",
        ["No import cycles between the modules of any package BROKEN", "scanqueue.scans"],
    ),
    (
        "an-import-pointing-up",
        "scanqueue.images",
        "from scanqueue import watcher",
        ["Layers: the command > the farm", "scanqueue.images -> scanqueue.watcher"],
    ),
    (
        "production-importing-the-emulator",
        "scanqueue.store.db",
        "from scanqueue.sim import cluster",
        ["Production modules never import the emulator"],
    ),
]


@pytest.mark.parametrize(
    ("module", "line", "said"), [p[1:] for p in PLANTED], ids=[p[0] for p in PLANTED]
)
def test_a_planted_import_fails_lint(tree: Path, module: str, line: str, said: list[str]) -> None:
    plant(tree, module, line)
    result = lint_imports(tree)
    assert result.returncode != 0
    for text in said:
        assert text in result.stdout


def test_a_module_without_a_layer_fails_lint(tree: Path) -> None:
    (tree / "scanqueue" / "stray.py").write_text('"""Not placed in any layer."""\n')
    result = lint_imports(tree)
    assert result.returncode != 0
    assert "scanqueue.stray" in result.stdout


def top_level_modules() -> set[str]:
    names = set()
    for path in (ROOT / "scanqueue").iterdir():
        if path.suffix == ".py" and path.stem != "__init__":
            names.add(f"scanqueue.{path.stem}")
        elif path.is_dir() and (path / "__init__.py").exists():
            names.add(f"scanqueue.{path.name}")
    return names


def contract(name: str) -> configparser.SectionProxy:
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    return config[f"importlinter:contract:{name}"]


def listed(section: configparser.SectionProxy, key: str) -> set[str]:
    return {line.strip() for line in section[key].splitlines() if line.strip()}


def test_the_emulator_contracts_name_every_module() -> None:
    modules = top_level_modules()
    assert listed(contract("emulator-out-of-production"), "source_modules") == (
        modules - {"scanqueue.sim"}
    ) | {"workers"}
    assert listed(contract("emulator-independent"), "forbidden_modules") == (
        modules - {"scanqueue.sim", "scanqueue.errors"}
    ) | {"workers"}
