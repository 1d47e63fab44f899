"""The command line's own behaviour: help, version, exit codes."""

from __future__ import annotations

import subprocess
import sys

import pytest

import scanqueue
from scanqueue import cli


def test_help_lists_commands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        cli.main(["--help"])
    assert caught.value.code == 0
    out = capsys.readouterr().out
    assert "migrate" in out


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["--version"])
    assert scanqueue.__version__ in capsys.readouterr().out


def test_no_command_prints_help_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([]) == 2
    assert "usage: scanqueue" in capsys.readouterr().out


def test_console_script_runs() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "scanqueue.cli", "--help"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0
    assert "commands" in done.stdout


def test_configuration_error_is_one_line_and_exit_2(
    tmp_path: object, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SCANQUEUE_CONFIG", "/nonexistent/scanqueue.toml")
    assert cli.main(["migrate"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("scanqueue: configuration error:")
    assert err.count("\n") == 1
