"""Property-based fuzzing of every parser that reads outside input.

For arbitrary input each parser either returns a value or raises its own
``PermanentError`` subclass (``ChallengeError`` for registry challenges):
never ``KeyError``, ``TypeError``, ``AttributeError`` or a recursion error,
which would crash a worker or the watcher instead of ending as a scan's
reason. Messages stay short, and a password inside the input never appears
in the message.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scanqueue import credentials, discovery, errors, images, registry, reports

PASSWORD = "Fuzz-Canary-Pw-4c9e"
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=20,
)


def _short(error: BaseException, limit: int = 4000) -> None:
    assert len(str(error)) < limit, len(str(error))


# ------------------------------------------------------------------ images


reference_alphabet = st.sampled_from([*"abcXYZ019./:@_-+ \t\n%sha256", "sha256:"])


@FUZZ
@given(st.text(max_size=300) | st.lists(reference_alphabet, max_size=80).map("".join))
def test_any_text_is_a_reference_or_an_invalid_reference(text: str) -> None:
    try:
        ref = images.parse(text)
    except images.InvalidReference as e:
        _short(e)
        return
    assert images.parse(str(ref)) == ref  # what parses, prints back to itself


@FUZZ
@given(st.text(max_size=200))
def test_any_image_id_is_parsed_or_refused(text: str) -> None:
    try:
        images.parse_image_id(text)
    except errors.PermanentError as e:
        _short(e)


# ------------------------------------------------------------------ credentials


secret_values = (
    json_values
    | st.just(PASSWORD)
    | st.just(base64.b64encode(f"user:{PASSWORD}".encode()).decode())
)
entries = st.fixed_dictionaries(
    {},
    optional={
        "username": json_values,  # a user name is no secret: the canary stays out of it
        "email": json_values,
        "auth": secret_values,
        "password": secret_values,
        "identitytoken": secret_values,
        "registrytoken": secret_values,
    },
)
docker_configs = st.one_of(
    st.fixed_dictionaries(
        {"auths": st.dictionaries(st.text(max_size=30), entries | json_values, max_size=3)}
    ),
    st.dictionaries(st.text(max_size=30), entries | json_values, max_size=3),
    json_values,
)


@FUZZ
@given(docker_configs)
def test_any_docker_config_gives_credentials_or_a_malformed_secret_error(doc: Any) -> None:
    try:
        found = credentials.parse_dockerconfig(json.dumps(doc), source="secret ns/fuzz")
    except credentials.MalformedSecret as e:
        _short(e)
        assert PASSWORD not in str(e)
        return
    for credential in found:
        assert PASSWORD not in repr(credential)


@FUZZ
@given(st.binary(max_size=300))
def test_any_bytes_as_a_docker_config_are_parsed_or_refused(data: bytes) -> None:
    try:
        credentials.parse_dockerconfig(data, source="secret ns/fuzz")
    except credentials.MalformedSecret as e:
        _short(e)


@FUZZ
@given(
    st.sampled_from(["kubernetes.io/dockerconfigjson", "kubernetes.io/dockercfg", "Opaque", ""]),
    st.dictionaries(
        st.sampled_from([".dockerconfigjson", ".dockercfg", "x"]),
        st.text(max_size=40)
        | docker_configs.map(lambda d: base64.b64encode(json.dumps(d).encode()).decode()),
        max_size=2,
    ),
)
def test_any_secret_gives_credentials_a_reason_or_a_malformed_secret_error(
    type_: str, data: dict[str, str]
) -> None:
    secret = {"metadata": {"namespace": "ns", "name": "fuzz"}, "type": type_, "data": data}
    try:
        credentials.from_secret(secret)
    except credentials.MalformedSecret as e:
        _short(e)
        assert PASSWORD not in str(e)


@FUZZ
@given(st.text(max_size=60), st.text(max_size=60))
def test_any_key_and_image_host_match_or_not_without_crashing(key: str, host: str) -> None:
    credentials.normalize_key(key)
    credentials.urls_match(key, host)


# ------------------------------------------------------------------ reports


vulnerability = st.fixed_dictionaries(
    {
        "VulnerabilityID": st.text(max_size=20) | json_values,
        "PkgName": st.text(max_size=10) | json_values,
        "InstalledVersion": st.text(max_size=10) | json_values,
        "Severity": st.sampled_from(["LOW", "MEDIUM", "HIGH", "CRITICAL", "UNKNOWN", "bad"])
        | json_values,
    },
    optional={"FixedVersion": json_values, "CVSS": json_values, "PublishedDate": json_values},
)
trivy_docs = st.fixed_dictionaries(
    {"SchemaVersion": st.sampled_from([2, 1, "2", None])},
    optional={
        "ArtifactName": json_values,
        "CreatedAt": json_values,
        "Metadata": json_values,
        "Results": st.lists(
            st.fixed_dictionaries(
                {"Target": json_values},
                optional={
                    "Vulnerabilities": st.lists(vulnerability, max_size=3) | json_values,
                    "Class": json_values,
                },
            ),
            max_size=3,
        )
        | json_values,
    },
)


@FUZZ
@given(trivy_docs)
def test_any_trivy_like_document_is_a_report_or_an_invalid_report(doc: dict[str, Any]) -> None:
    text = json.dumps(doc)
    try:
        report = reports.parse(text, source="fuzz")
    except reports.InvalidReport as e:
        _short(e)
        return
    for finding in report.findings:
        assert finding.severity in ("UNKNOWN", "LOW", "MEDIUM", "HIGH", "CRITICAL")


@FUZZ
@given(st.binary(max_size=500) | st.text(max_size=500))
def test_any_output_is_a_report_or_an_invalid_report(data: bytes | str) -> None:
    try:
        reports.parse(data, source="fuzz")
    except reports.InvalidReport as e:
        _short(e)


# ------------------------------------------------------------------ discovery


@FUZZ
@given(
    json_values
    | st.dictionaries(
        st.sampled_from(
            [
                "version",
                "cluster",
                "namespace",
                "pod",
                "container",
                "container_type",
                "image",
                "digest",
                "workload_kind",
                "workload_name",
                "node",
                "pull_secrets",
                "service_account",
                "scan_id",
            ]
        ),
        json_values,
        max_size=14,
    )
)
def test_any_task_payload_is_a_request_or_an_invalid_payload(payload: Any) -> None:
    try:
        request = discovery.from_payload(payload)
    except discovery.InvalidPayload as e:
        _short(e)
        return
    assert discovery.from_payload(discovery.to_payload(request)) == request


# What the API server can return: the schema's types, any values.
short = st.text(max_size=12)
owner_refs = st.lists(
    st.fixed_dictionaries(
        {
            "apiVersion": short,
            "kind": st.sampled_from(["ReplicaSet", "Job", "StatefulSet", "x"]),
            "name": short,
            "uid": short,
        },
        optional={"controller": st.booleans()},
    ),
    max_size=2,
)
containers = st.lists(
    st.fixed_dictionaries({"name": short, "image": st.text(max_size=40)}), max_size=3
)
statuses = st.lists(
    st.fixed_dictionaries(
        {
            "name": short,
            "image": st.text(max_size=40),
            "imageID": st.text(max_size=90),
            "ready": st.booleans(),
            "restartCount": st.integers(0, 5),
        },
        optional={"state": st.sampled_from([{}, {"running": {}}, {"waiting": {"reason": "x"}}])},
    ),
    max_size=3,
)
pods = st.fixed_dictionaries(
    {
        "metadata": st.fixed_dictionaries(
            {"name": short, "namespace": st.just("ns")},
            optional={
                "ownerReferences": owner_refs,
                "labels": st.dictionaries(short, short, max_size=3),
            },
        ),
        "spec": st.fixed_dictionaries(
            {"containers": containers},
            optional={
                "initContainers": containers,
                "ephemeralContainers": containers,
                "imagePullSecrets": st.lists(st.fixed_dictionaries({"name": short}), max_size=2),
                "serviceAccountName": short,
                "nodeName": short,
            },
        ),
        "status": st.fixed_dictionaries(
            {},
            optional={
                "phase": st.sampled_from(["Pending", "Running", "Succeeded", "Failed"]),
                "containerStatuses": statuses,
                "initContainerStatuses": statuses,
                "ephemeralContainerStatuses": statuses,
            },
        ),
    }
)


@FUZZ
@given(pods)
def test_any_pod_gives_requests_or_a_permanent_error(pod: dict[str, Any]) -> None:
    owners = discovery.OwnerResolver(lambda kind, namespace, name: None)
    try:
        discovery.requests(pod, cluster="alpha", owners=owners)
    except errors.PermanentError as e:
        _short(e)


# ------------------------------------------------------------------ registry


challenge_text = st.lists(
    st.sampled_from(
        [
            "Bearer ",
            "Basic ",
            "realm=",
            '"',
            "http://x/t",
            ",",
            "service=",
            "scope=",
            "=",
            " ",
            "error=",
            "\\",
            "a",
            "Negotiate",
        ]
    ),
    max_size=20,
).map("".join)


@FUZZ
@given(st.text(max_size=200) | challenge_text)
def test_any_www_authenticate_header_is_a_challenge_or_a_challenge_error(header: str) -> None:
    try:
        challenge = registry.parse_challenge(header)
    except registry.ChallengeError as e:
        _short(e)
        return
    assert challenge.scheme in ("basic", "bearer")
