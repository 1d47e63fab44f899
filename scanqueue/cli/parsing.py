"""What every command module of the ``scanqueue`` command shares: the command type, group help.

It exists so that the command modules and the package that assembles them do not import
each other. It must never import a command module.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeAlias

Command = Callable[[argparse.Namespace], int]
if TYPE_CHECKING:  # argparse's class is generic only to the type checker
    Subparsers: TypeAlias = argparse._SubParsersAction[argparse.ArgumentParser]
else:
    Subparsers = argparse._SubParsersAction


def print_help(parser: argparse.ArgumentParser) -> int:
    """Print a command group's help; exit code 2 (a group alone is a usage error)."""
    parser.print_help()
    return 2
