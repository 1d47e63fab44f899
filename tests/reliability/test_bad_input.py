"""Bad input from the corpus in tests/data/bad ends as a clear error, never a crash.

Each parser refuses each file with its own ``PermanentError`` subclass and a
message that names the source and what is wrong; the CLI prints that message
with exit code 2 and no traceback; registries that answer with HTML, loop
redirects or hang end as a registry error naming the host. The farm-level
counterpart (scan rows with reasons, processes alive) is test_bad_input_farm.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from scanqueue import config, credentials, errors, images, registry, reports

BAD = Path(__file__).parents[1] / "data" / "bad"
CONFIGS = sorted((BAD / "dockerconfig").iterdir())
TRIVY = sorted((BAD / "trivy").iterdir())
REFERENCES = [
    line
    for line in (BAD / "images.txt").read_text().splitlines()
    if line.strip() and not line.startswith("#")
]
EXPECTED_CONFIG = {
    "not-json.txt": "not valid JSON",
    "empty-file.json": "not valid JSON",
    "auths-is-a-list.json": "'auths' is not a JSON object",
    "auth-is-a-number.json": "field 'auth' is not a string",
    "entry-is-a-string.json": "entry 'registry.example.com'",
    "auth-not-base64.json": "not base64 of username:password",
    "auth-without-colon.json": "not base64 of username:password",
    "username-is-a-list.json": "'username'",
    "top-level-list.json": "docker config",
}
EXPECTED_REPORT = {
    "empty.txt": "empty output",
    "truncated.json": "truncated JSON",
    "legacy-list.json": "legacy Trivy JSON",
    "html.html": "not JSON",
    "stack-trace.txt": "panic: runtime error",
    "schema-version-1.json": "SchemaVersion 1 is not supported",
    "wrong-types.json": "VulnerabilityID",
    "null.json": "SchemaVersion 2",
}


def test_the_corpus_lists_what_each_file_must_say() -> None:
    assert sorted(p.name for p in CONFIGS) == sorted([*EXPECTED_CONFIG, "empty-auths.json"])
    assert sorted(p.name for p in TRIVY) == sorted(EXPECTED_REPORT)


@pytest.mark.parametrize("path", [p for p in CONFIGS if p.name in EXPECTED_CONFIG], ids=str)
def test_malformed_dockerconfig_is_refused_naming_the_secret_and_the_problem(path: Path) -> None:
    with pytest.raises(credentials.MalformedSecret) as caught:
        credentials.parse_dockerconfig(path.read_bytes(), source="secret team-a/regcred")
    message = str(caught.value)
    assert message.startswith("secret team-a/regcred: ")
    assert EXPECTED_CONFIG[path.name] in message


def test_dockerconfig_with_empty_auths_gives_no_credential_and_says_why() -> None:
    content = (BAD / "dockerconfig" / "empty-auths.json").read_bytes()
    assert credentials.parse_dockerconfig(content, source="secret team-a/regcred") == []
    secret = _secret("kubernetes.io/dockerconfigjson", ".dockerconfigjson", content)
    found, _ = credentials.from_secret(secret)
    assert found == []


def _secret(type_: str, key: str, content: bytes) -> dict[str, Any]:
    import base64

    return {
        "metadata": {"namespace": "team-a", "name": "regcred"},
        "type": type_,
        "data": {key: base64.b64encode(content).decode()},
    }


@pytest.mark.parametrize(
    ("type_", "key", "expected"),
    [
        ("Opaque", "password", "regcred"),
        ("kubernetes.io/tls", "tls.crt", "regcred"),
        ("kubernetes.io/dockerconfigjson", "wrong-key", ".dockerconfigjson"),
    ],
)
def test_secret_of_the_wrong_type_or_key_is_skipped_with_a_reason_naming_it(
    type_: str, key: str, expected: str
) -> None:
    secret = _secret(type_, key, b"whatever")
    try:
        found, reason = credentials.from_secret(secret)
    except credentials.MalformedSecret as e:
        found, reason = [], str(e)
    assert found == []
    assert reason is not None and expected in reason and "team-a/regcred" in reason


@pytest.mark.parametrize("text", REFERENCES)
def test_text_that_is_not_an_image_reference_is_refused(text: str) -> None:
    with pytest.raises(images.InvalidReference) as caught:
        images.parse(text)
    assert "image reference" in str(caught.value)


@pytest.mark.parametrize(
    "text",
    ["a/" + "b" * 100_000 + ":1", "x" * 300, "registry.example.com/" + "a/" * 200 + "app"],
)
def test_absurdly_long_reference_is_refused_with_a_short_message(text: str) -> None:
    with pytest.raises(images.InvalidReference) as caught:
        images.parse(text)
    assert len(str(caught.value)) < 1500


@pytest.mark.parametrize("path", TRIVY, ids=str)
def test_bad_trivy_output_is_refused_naming_the_source_and_the_problem(path: Path) -> None:
    with pytest.raises(reports.InvalidReport) as caught:
        reports.parse(path.read_bytes(), source="log of scan Job s/j")
    message = str(caught.value)
    assert message.startswith("log of scan Job s/j: ")
    assert EXPECTED_REPORT[path.name] in message
    assert len(message) < 2000


def test_fifty_megabytes_of_trivy_output_is_refused_with_a_short_message() -> None:
    big = b"{" + b'"Padding": "' + b"x" * (50 * 1024 * 1024) + b'"'  # unterminated, 50 MB
    with pytest.raises(reports.InvalidReport) as caught:
        reports.parse(big, source="log of scan Job s/j")
    assert "truncated JSON" in str(caught.value) or "not JSON" in str(caught.value)
    assert len(str(caught.value)) < 2000


def test_fifty_megabytes_of_valid_trivy_json_is_parsed() -> None:
    doc = json.loads((Path(__file__).parents[1] / "data" / "trivy" / "node-alpine-3.19.json")
                     .read_text(encoding="utf-8-sig"))  # fmt: skip
    text = json.dumps(doc) + " " * (50 * 1024 * 1024)  # padding is valid JSON whitespace
    assert len(reports.parse(text, source="big").findings) == 7


@pytest.mark.parametrize("path", [BAD / "trivy" / n for n in sorted(EXPECTED_REPORT)], ids=str)
def test_cli_reports_parse_prints_the_reason_and_exits_2(path: Path) -> None:
    done = _cli("reports", "parse", str(path))
    assert done.returncode == 2
    assert EXPECTED_REPORT[path.name] in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("name", sorted(EXPECTED_CONFIG))
def test_cli_credentials_match_prints_the_reason_and_exits_2(name: str) -> None:
    done = _cli("credentials", "match", "registry.example.com/app:1", "--dockerconfig",
                str(BAD / "dockerconfig" / name))  # fmt: skip
    assert done.returncode == 2
    assert EXPECTED_CONFIG[name] in done.stderr
    assert "Traceback" not in done.stderr


def test_cli_refuses_an_image_that_is_not_a_reference() -> None:
    done = _cli("credentials", "match", "UPPERCASE/app:1", "--dockerconfig",
                str(BAD / "dockerconfig" / "empty-auths.json"))  # fmt: skip
    assert done.returncode == 2
    assert "must be lowercase" in done.stderr
    assert "Traceback" not in done.stderr


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCANQUEUE_")}
    return subprocess.run([sys.executable, "-m", "scanqueue.cli", *args], capture_output=True,
                          text=True, timeout=60, env=env, check=False)  # fmt: skip


# ------------------------------------------------------------ registries that misbehave


def _client(host: str) -> registry.Client:
    settings = config.ScanSettings(insecure_registries=(host,), registry_timeout_seconds=1.0)
    return registry.Client(settings=settings)


def _resolve(host: str) -> errors.ScanqueueError:
    reference = images.parse(f"{host}/team/app:1")
    credential = credentials.parse_dockerconfig(
        json.dumps({"auths": {host: {"username": "alice", "password": "Canary-Reg-9d1"}}}),
        source="secret team-a/regcred",
    )
    with _client(host) as client, pytest.raises(errors.ScanqueueError) as caught:
        client.resolve(reference, credential)
    assert "Canary-Reg-9d1" not in str(caught.value)
    return caught.value


def test_registry_answering_html_is_a_clear_registry_error(
    scripted_server: Callable[..., Any],
) -> None:
    html = b"<!DOCTYPE html><html><body>Welcome to nginx!</body></html>"
    server = scripted_server(lambda seen: (200, {"Content-Type": "text/html"}, html))
    error = _resolve(server.host)
    assert server.host in str(error)


def test_registry_redirecting_in_a_loop_is_a_clear_registry_error(
    scripted_server: Callable[..., Any],
) -> None:
    server = scripted_server(lambda seen: (302, {"Location": seen.path}, b""))
    error = _resolve(server.host)
    assert server.host in str(error)
    assert len(server.seen) < 50  # the client gave up instead of following forever


def test_registry_that_hangs_is_a_temporary_registry_error(hanging_server: str) -> None:
    error = _resolve(hanging_server)
    assert isinstance(error, errors.TemporaryError)
    assert hanging_server in str(error)
