"""The ``scanqueue`` command: one module per command group, assembled here.

Each subcommand is a ``_cmd_*`` function taking the parsed arguments and
returning the exit code. Exit codes: 0 success, 1 unexpected failure,
2 bad input (usage, unreadable file, invalid reference), 3 refused by the
other side (e.g. no credential accepted). Errors print one line to stderr,
never a credential value. Heavy modules are imported inside the command so
that ``scanqueue --help`` stays fast and the emulator stays out of production
import paths.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import scanqueue
from scanqueue import errors
from scanqueue.cli import (
    cluster,
    exporter,
    farm,
    maintenance,
    parsing,
    pullsecrets,
    rbac,
    results,
    sboms,
    sim,
    status,
)

Command = parsing.Command


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code (the console script exits with it)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    command: Command | None = getattr(args, "command", None)
    if command is None:
        parser.print_help()
        return 2
    try:
        return command(args)
    except errors.ConfigError as e:
        print(f"scanqueue: configuration error: {e}", file=sys.stderr)
        return 2
    except errors.PermanentError as e:
        print(f"scanqueue: {e}", file=sys.stderr)
        return 2
    except errors.TemporaryError as e:
        print(f"scanqueue: {e} (temporary; try again)", file=sys.stderr)
        return 1
    except ModuleNotFoundError as e:
        if not _raised_by_the_emulator(e):
            raise
        print(
            "scanqueue: this command runs the Kubernetes API emulator (the demo cluster), "
            f"which needs the 'sim' extra: pip install 'scanqueue[sim]' (missing: {e.name}). "
            "A production install (the image) leaves it out; run real clusters from a "
            "scanqueue.toml instead.",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        return 130


def _raised_by_the_emulator(error: ModuleNotFoundError) -> bool:
    """Whether a missing module was imported by ``scanqueue.sim`` (the ``sim`` extra's side)."""
    tb = error.__traceback__
    while tb is not None:
        if str(tb.tb_frame.f_globals.get("__name__", "")).startswith("scanqueue.sim"):
            return True
        tb = tb.tb_next
    return False


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scanqueue",
        description=(
            "Scan the container images running in Kubernetes clusters with Trivy, "
            "one temporary single-registry credential Secret per scan, "
            "and keep the results in Postgres."
        ),
        epilog=(
            "Settings come from SCANQUEUE_CONFIG (default ./scanqueue.toml) and "
            "SCANQUEUE_<SECTION>_<KEY> environment variables; see docs/configuration.md."
        ),
    )
    parser.add_argument("--version", action="version", version=f"scanqueue {scanqueue.__version__}")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")
    results.add_commands(sub)
    pullsecrets.add_commands(sub)
    cluster.add_commands(sub)
    sim.add_commands(sub)
    farm.add_commands(sub)
    exporter.add_commands(sub)
    maintenance.add_commands(sub)
    status.add_commands(sub)
    rbac.add_commands(sub)
    sboms.add_commands(sub)
    return parser
