"""The image's `pip install .` works from exactly the files docker/Dockerfile copies.

No Docker engine here: build the wheel pip would build in the image, from a
directory holding only the Dockerfile's COPY sources, and check it carries what
the farm needs at run time (migrations, the demo data, the workers package, the
console script) and nothing it must not (tests).
"""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from tests.support import ops_commands

ROOT = Path(__file__).resolve().parents[2]


def test_wheel_built_from_the_docker_context_has_everything_the_farm_runs(
    tmp_path: Path,
) -> None:
    context = tmp_path / "context"
    context.mkdir()
    for source in ops_commands.copy_sources():
        path = ROOT / source
        if path.is_dir():
            shutil.copytree(path, context / source, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            (context / source).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, context / source)
    dist = tmp_path / "dist"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(dist), "."],
        cwd=context,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    (wheel,) = dist.glob("scanqueue-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())

    needed = [
        *(
            p.relative_to(ROOT).as_posix()
            for p in (ROOT / "scanqueue" / "migrations").glob("*.sql")
        ),
        *(
            p.relative_to(ROOT).as_posix()
            for p in (ROOT / "scanqueue" / "sim" / "data").rglob("*")
            if p.is_file()
        ),
        *(p.relative_to(ROOT).as_posix() for p in (ROOT / "workers").glob("*.py")),
        "scanqueue/cli/__init__.py",
        "scanqueue/logs.py",
    ]
    missing = sorted(set(needed) - names)
    assert missing == [], f"the image would lack {missing}"
    assert not any(n.startswith("tests/") for n in names)

    (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    parser = configparser.ConfigParser()
    parser.read_string(zipfile.ZipFile(wheel).read(entry_points).decode())
    assert parser["console_scripts"]["scanqueue"] == "scanqueue.cli:main"
