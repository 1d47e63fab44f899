"""``scanqueue credentials match``: the stable command other tools and tests call."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

import pytest

from scanqueue import cli

CANARY = "canary-cli-pw-42b1"
CANARY_TOKEN = "canary-cli-token-9e0c"


def write(tmp_path: Path, name: str, document: object) -> str:
    path = tmp_path / name
    path.write_text(json.dumps(document))
    return str(path)


def auth(user: str, password: str) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode()


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_match_lists_every_candidate_in_kubelet_order(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first = write(
        tmp_path,
        "first.json",
        {
            "auths": {
                "r.example.com": {"auth": auth("general", CANARY)},
                "other.io": {"username": "x", "password": CANARY},
            }
        },
    )
    second = write(
        tmp_path,
        "second.json",  # legacy .dockercfg: no auths wrapper
        {"https://r.example.com/v2/team": {"username": "team", "password": CANARY}},
    )
    code, out, err = run(
        [
            "credentials",
            "match",
            "r.example.com/team/app:1",
            "--dockerconfig",
            first,
            "--dockerconfig",
            second,
        ],
        capsys,
    )
    assert (code, err) == (0, "")
    assert json.loads(out) == [
        {"source": second, "registry": "r.example.com/team", "username": "team"},
        {"source": first, "registry": "r.example.com", "username": "general"},
    ]
    assert CANARY not in out


def test_same_registry_in_two_files_returns_both_in_order(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a = write(tmp_path, "a.json", {"auths": {"localhost:5000": {"auth": auth("a", CANARY)}}})
    b = write(tmp_path, "b.json", {"auths": {"localhost:5000": {"auth": auth("b", CANARY)}}})
    code, out, _ = run(
        ["credentials", "match", "localhost:5000/x", "--dockerconfig", a, "--dockerconfig", b],
        capsys,
    )
    assert code == 0
    assert [row["username"] for row in json.loads(out)] == ["a", "b"]


def test_docker_hub_index_key_matches_short_names(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    hub = write(
        tmp_path, "hub.json", {"auths": {"https://index.docker.io/v1/": {"auth": auth("h", "p")}}}
    )
    code, out, _ = run(["credentials", "match", "nginx", "--dockerconfig", hub], capsys)
    assert code == 0
    assert json.loads(out) == [{"source": hub, "registry": "index.docker.io", "username": "h"}]


def test_no_match_prints_an_empty_list_and_exits_0(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = write(tmp_path, "c.json", {"auths": {"q.io": {"auth": auth("u", CANARY)}}})
    code, out, _ = run(["credentials", "match", "r.io/app", "--dockerconfig", cfg], capsys)
    assert (code, json.loads(out)) == (0, [])


def test_bad_image_reference_exits_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = write(tmp_path, "c.json", {"auths": {}})
    code, out, err = run(["credentials", "match", "Bad/Image", "--dockerconfig", cfg], capsys)
    assert code == 2
    assert out == ""
    assert err.count("\n") == 1 and "'Bad/Image'" in err


def test_unreadable_file_exits_2_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = str(tmp_path / "missing.json")
    code, _, err = run(["credentials", "match", "nginx", "--dockerconfig", missing], capsys)
    assert code == 2
    assert err.count("\n") == 1 and missing in err


def test_malformed_file_exits_2_without_its_content(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "broken.json"
    path.write_text('{"auths": {"r.io": {"password": "' + CANARY)
    code, out, err = run(["credentials", "match", "r.io/x", "--dockerconfig", str(path)], capsys)
    assert code == 2
    assert err.count("\n") == 1 and str(path) in err
    assert CANARY not in out + err


def test_dockerconfig_is_required(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        cli.main(["credentials", "match", "nginx"])
    assert caught.value.code == 2


def test_credentials_without_subcommand_prints_help_and_exits_2(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, _ = run(["credentials"], capsys)
    assert code == 2
    assert "match" in out


def test_match_as_a_subprocess_never_prints_a_secret(tmp_path: Path) -> None:
    cfg = write(
        tmp_path,
        "c.json",
        {
            "auths": {
                "*.example.com": {"auth": auth("glob", CANARY)},
                "r.example.com": {"identitytoken": CANARY_TOKEN},
            }
        },
    )
    image = "r.example.com/app@sha256:" + "ab" * 32
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "scanqueue.cli",
            "credentials",
            "match",
            image,
            "--dockerconfig",
            cfg,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [
        {"source": cfg, "registry": "r.example.com", "username": ""},
        {"source": cfg, "registry": "*.example.com", "username": "glob"},
    ]
    for secret in (CANARY, CANARY_TOKEN, auth("glob", CANARY)):
        assert secret not in done.stdout + done.stderr
