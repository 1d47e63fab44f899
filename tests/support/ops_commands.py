"""Check the commands that the Dockerfile, compose.yaml and deploy/ start.

No container runs here, so the next best thing: every command those files name
must be a real ``scanqueue`` subcommand (parsed by the real parser) or a real
``celery -A workers.app <subcommand>`` with options that subcommand knows.
``problems(argv)`` returns what is wrong, empty when the command is fine.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import shlex
import types
from collections.abc import Sequence
from pathlib import Path

CELERY_APP = "workers.app"


def problems(argv: Sequence[str]) -> list[str]:
    """What is wrong with ``argv`` as a command of the scanqueue image; [] when nothing."""
    argv = list(argv)
    if not argv:
        return ["empty command"]
    if argv[0] in ("sh", "/bin/sh") and len(argv) == 3 and argv[1] == "-c":
        return problems(shlex.split(argv[2].replace('"$HOSTNAME"', "host")))
    if argv[0] == "scanqueue":
        return _scanqueue(argv[1:])
    if argv[0] == "celery":
        return _celery(argv[1:])
    if argv[0] == "python" and argv[1:2] == ["-c"]:
        return []  # inline health checks are checked by compiling them (see callers)
    if argv[0] == "python" and argv[1:2] == [HEALTHCHECK]:
        return _healthcheck(argv[2:])
    return [f"{argv[0]!r} is neither scanqueue nor celery"]


HEALTHCHECK = "/usr/local/lib/scanqueue/healthcheck.py"  # where docker/Dockerfile copies it


def _healthcheck(args: list[str]) -> list[str]:
    """``healthcheck.py [--max-age N] -- CMD``: N a number of seconds, CMD a real command."""
    found = []
    if ("COPY", f"docker/healthcheck.py {HEALTHCHECK}") not in dockerfile():
        found.append(f"docker/Dockerfile does not copy docker/healthcheck.py to {HEALTHCHECK}")
    if args[:1] == ["--max-age"]:
        try:
            float(args[1])
        except (IndexError, ValueError):
            found.append(f"healthcheck.py --max-age needs seconds, got {args[1:2]}")
        args = args[2:]
    if args[:1] != ["--"] or len(args) < 2:
        return [*found, "healthcheck.py: the role's command must follow --"]
    return [*found, *problems(args[1:])]


def _scanqueue(args: list[str]) -> list[str]:
    from scanqueue import cli

    parser = cli.build_parser()
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            parser.parse_args(args)
    except SystemExit as e:
        if e.code not in (0, None):
            return [f"scanqueue {' '.join(args)}: {err.getvalue().strip()}"]
    return []


def _celery(args: list[str]) -> list[str]:
    from celery.bin.celery import celery as group
    from flower.options import options as flower_options

    found: list[str] = []
    app = None
    rest = list(args)
    while rest and rest[0].startswith("-"):
        token = rest.pop(0)
        if token in ("-A", "--app"):
            app = rest.pop(0) if rest else None
        elif token.startswith("--app="):
            app = token.partition("=")[2]
        else:
            found.append(f"celery: unexpected global option {token}")
    if app != CELERY_APP:
        found.append(f"celery: -A {app} instead of -A {CELERY_APP}")
    if not rest:
        return [*found, "celery: no subcommand"]
    name, options = rest[0], rest[1:]
    command = group.commands.get(name)
    if command is None:
        return [*found, f"celery has no subcommand {name!r}"]
    if name == "flower":
        known = {f"--{o}" for o in flower_options._options}
    else:
        known = {o for p in command.params for o in (*p.opts, *p.secondary_opts)}
        # options the app adds to Celery's commands (workers/app.py: worker --metrics-port)
        from workers.app import app as celery_app

        extra = celery_app.user_options.get(name, ())
        known |= {o for p in extra for o in (*p.opts, *p.secondary_opts)}
    for option in options:
        if option.startswith("-"):
            flag = option.partition("=")[0]
            if flag not in known:
                found.append(f"celery {name} has no option {flag}")
    return found


def load_healthcheck() -> types.ModuleType:
    """``docker/healthcheck.py`` as a module (docker/ is not a package)."""
    path = Path(__file__).resolve().parents[2] / "docker" / "healthcheck.py"
    spec = importlib.util.spec_from_file_location("scanqueue_docker_healthcheck", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def dockerfile() -> list[tuple[str, str]]:
    """docker/Dockerfile as (INSTRUCTION, arguments); continuations joined, no comments."""
    out: list[tuple[str, str]] = []
    pending = ""
    path = Path(__file__).resolve().parents[2] / "docker" / "Dockerfile"
    for line in path.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        full = pending + stripped
        pending = ""
        instruction, _, args = full.partition(" ")
        out.append((instruction.upper(), args.strip()))
    return out


def copy_sources() -> list[str]:
    """The build-context paths the Dockerfile COPYs (relative to the repository root)."""
    sources: list[str] = []
    for instruction, args in dockerfile():
        if instruction == "COPY" and not args.startswith("--from="):  # not from another image
            *parts, _ = shlex.split(args)
            sources += parts
    return sources


def stages() -> dict[str, str]:
    """The Dockerfile's named build stages: name -> image (``FROM IMAGE AS NAME``)."""
    found = {}
    for instruction, args in dockerfile():
        words = args.split()
        if instruction == "FROM" and len(words) == 3 and words[1].upper() == "AS":
            found[words[2]] = words[0]
    return found
