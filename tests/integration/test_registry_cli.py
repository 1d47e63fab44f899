"""``scanqueue registry resolve`` against real registries: JSON out, exit codes, no secret."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from scanqueue import cli
from tests.support import services
from tests.support.registry_fixtures import TokenWorld, canary

RegistryFactory = Callable[..., services.Registry]


@pytest.fixture(autouse=True)
def no_settings_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Default settings: no scanqueue.toml in the working directory, no SCANQUEUE_* variables."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SCANQUEUE_CONFIG", raising=False)


def write(path: Path, content: str) -> str:
    path.write_text(content)
    return str(path)


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_resolve_prints_digest_and_the_accepted_second_secret(
    tmp_path: Path, registry_factory: RegistryFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    stale_password = canary("cli-stale")
    server = registry_factory(users={"ana": "ana-pw-1"})
    server.push("team/app", "1", content="cli")
    expected = services.skopeo_digest(f"docker://{server.host}/team/app:1", creds="ana:ana-pw-1")
    stale = write(
        tmp_path / "stale.json", services.dockerconfigjson(server.host, "ana", stale_password)
    )
    current = write(
        tmp_path / "current.json", services.dockerconfigjson(server.host, "ana", "ana-pw-1")
    )

    code, out, err = run(
        ["registry", "resolve", f"{server.host}/team/app:1",
         "--dockerconfig", stale, "--dockerconfig", current],
        capsys,
    )  # fmt: skip

    assert code == 0, err
    assert json.loads(out) == {
        "image": f"{server.host}/team/app:1",
        "digest": expected,
        "credential": {"source": current, "registry": server.host, "username": "ana"},
    }
    assert stale_password not in out + err


def test_resolve_lists_every_refusal_and_exits_3_without_printing_a_secret(
    tmp_path: Path, registry_factory: RegistryFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    secret = canary("cli-refused")
    server = registry_factory(users={"ana": "ana-pw-1"})
    server.push("team/app", "1")
    wrong = write(tmp_path / "wrong.json", services.dockerconfigjson(server.host, "ana", secret))

    code, out, err = run(
        [
            "registry",
            "resolve",
            f"{server.host}/team/app:1",
            "--dockerconfig",
            wrong,
            "--anonymous",
        ],
        capsys,
    )

    assert code == 3
    printed = json.loads(out)
    assert printed["digest"] is None and printed["credential"] is None
    assert [(r["source"], r["answer"], r["status"]) for r in printed["refusals"]] == [
        (wrong, "unauthorized", 401),
        ("anonymous", "unauthorized", 401),
    ]
    assert f"no credential accepted for {server.host}/team/app:1" in err
    assert f"  - {wrong} (user 'ana' for {server.host}): 401 credential refused" in err
    assert secret not in out + err


def test_resolve_without_matching_secret_or_anonymous_exits_3_and_says_why(
    tmp_path: Path, registry_factory: RegistryFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    server = registry_factory(users={"ana": "ana-pw-1"})
    other = write(tmp_path / "other.json", services.dockerconfigjson("quay.io", "ana", "pw"))

    code, out, err = run(
        ["registry", "resolve", f"{server.host}/team/app:1", "--dockerconfig", other], capsys
    )

    assert code == 3
    assert json.loads(out)["refusals"] == []
    assert "anonymous pulls are not allowed" in err


def test_resolve_anonymously_prints_a_null_credential(
    token_world: TokenWorld, capsys: pytest.CaptureFixture[str]
) -> None:
    digest = token_world.push("public/app", "1")
    token_world.issuer.grants[""] = {"public/app": {"pull"}}
    image = f"{token_world.registry.host}/public/app:1"

    code, out, err = run(["registry", "resolve", image, "--anonymous"], capsys)

    assert code == 0, err
    assert json.loads(out) == {"image": image, "digest": digest, "credential": None}


def test_resolve_of_an_unreachable_registry_exits_3_and_says_try_again(
    capsys: pytest.CaptureFixture[str],
) -> None:
    image = f"127.0.0.1:{services.free_port()}/team/app:1"

    code, out, err = run(["registry", "resolve", image, "--anonymous"], capsys)

    assert code == 3
    assert json.loads(out)["refusals"][0]["answer"] == "unreachable"
    assert "connection refused" in err and "try again" in err


def test_resolve_rejects_a_bad_reference_with_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["registry", "resolve", "Not A Reference"], capsys)

    assert code == 2
    assert out == ""
    assert "Not A Reference" in err
