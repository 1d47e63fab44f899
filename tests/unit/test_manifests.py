"""The scan Job and its credential Secret: exact dicts, strict schema validation, no leaks."""

from __future__ import annotations

import base64
import dataclasses
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from scanqueue import config, credentials, errors, manifests

DIGEST = "sha256:" + "ab" * 32
IMAGE = "127.0.0.1:5000/team/app"
TARGET = f"{IMAGE}@{DIGEST}"
CANARY = "canary-pw-7f3e2d1c"
CANARY_TOKEN = "canary-token-9a8b7c"

CLUSTER = config.ClusterSettings(name="prod-eu", kubeconfig="/k", scan_namespace="scans")
SCAN = config.ScanSettings(job_deadline_seconds=600, job_ttl_seconds=3600)


@dataclasses.dataclass(frozen=True)
class Cred:
    username: str = ""
    password: str = dataclasses.field(default="", repr=False)
    token: str = dataclasses.field(default="", repr=False)


def spec(**changes: Any) -> manifests.ScanSpec:
    values: dict[str, Any] = {
        "cluster": CLUSTER,
        "scan": SCAN,
        "image": IMAGE,
        "digest": DIGEST,
        "mode": "registry",
        "scan_id": "scan-0001",
        "attempt": 1,
        "credential": "basic",
    }
    values.update(changes)
    return manifests.ScanSpec(**values)


def validate(obj: dict[str, Any]) -> None:
    kubernetes_validate.validate(obj, "1.30", strict=True)


def container(job: dict[str, Any], name: str = "trivy") -> dict[str, Any]:
    pod = job["spec"]["template"]["spec"]
    found = [c for c in pod.get("containers", []) if c["name"] == name]
    assert len(found) == 1
    return found[0]


def env(job: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e for e in container(job).get("env", [])}


EXPECTED_LABELS = {
    "app.kubernetes.io/managed-by": "scanqueue",
    "scanqueue.io/cluster": "prod-eu",
    "scanqueue.io/digest": "ab" * 31 + "a",
    "scanqueue.io/scan-id": "scan-0001",
    "scanqueue.io/mode": "registry",
}


def test_registry_mode_job_is_the_expected_manifest() -> None:
    s = spec()
    name = manifests.job_name("prod-eu", DIGEST, 1)
    expected_security = {
        "runAsNonRoot": True,
        "runAsUser": 10001,
        "runAsGroup": 10001,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    annotations = {"scanqueue.io/image": TARGET, "scanqueue.io/attempt": "1"}
    secret_ref = {"name": f"{name}-cred", "optional": False}
    assert manifests.scan_job(s) == {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name,
            "namespace": "scans",
            "labels": EXPECTED_LABELS,
            "annotations": annotations,
        },
        "spec": {
            "suspend": True,
            "backoffLimit": 0,
            "completions": 1,
            "parallelism": 1,
            "activeDeadlineSeconds": 600,
            "ttlSecondsAfterFinished": 3600,
            "template": {
                "metadata": {"labels": EXPECTED_LABELS, "annotations": annotations},
                "spec": {
                    "restartPolicy": "Never",
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "terminationGracePeriodSeconds": 10,
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": 10001,
                        "runAsGroup": 10001,
                        "fsGroup": 10001,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "containers": [
                        {
                            "name": "trivy",
                            "image": "aquasec/trivy:0.76.0",
                            "imagePullPolicy": "IfNotPresent",
                            "command": ["trivy"],
                            "args": [
                                "image",
                                "--format",
                                "json",
                                "--quiet",
                                "--scanners",
                                "vuln",
                                "--timeout",
                                "570s",
                                "--cache-dir",
                                "/var/scanqueue/cache",
                                TARGET,
                            ],
                            "env": [
                                {
                                    "name": "TRIVY_USERNAME",
                                    "valueFrom": {
                                        "secretKeyRef": {**secret_ref, "key": "username"}
                                    },
                                },
                                {
                                    "name": "TRIVY_PASSWORD",
                                    "valueFrom": {
                                        "secretKeyRef": {**secret_ref, "key": "password"}
                                    },
                                },
                            ],
                            "resources": {
                                "requests": {"cpu": "100m", "memory": "256Mi"},
                                "limits": {
                                    "cpu": "1",
                                    "memory": "2Gi",
                                    "ephemeral-storage": "4Gi",
                                },
                            },
                            "volumeMounts": [
                                {"name": "work", "mountPath": "/var/scanqueue"},
                                {"name": "tmp", "mountPath": "/tmp"},
                            ],
                            "securityContext": expected_security,
                        }
                    ],
                    "volumes": [
                        {"name": "work", "emptyDir": {"sizeLimit": "3Gi"}},
                        {"name": "tmp", "emptyDir": {}},
                    ],
                },
            },
        },
    }


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"credential": "token"},
        {"credential": None},
        {"cluster": dataclasses.replace(CLUSTER, trivy_server="http://trivy.scans:4954")},
        {"scan": dataclasses.replace(SCAN, insecure_registries=("127.0.0.1:5000",))},
        {"mode": "node", "credential": None, "node_name": "node-1"},
    ],
    ids=["basic", "token", "anonymous", "server", "insecure", "node"],
)
def test_every_job_variant_passes_strict_schema_validation(changes: dict[str, Any]) -> None:
    validate(manifests.scan_job(spec(**changes)))


def test_token_credential_reaches_trivy_only_as_secret_key_ref() -> None:
    s = spec(credential="token")
    variables = env(manifests.scan_job(s))
    assert variables == {
        "TRIVY_REGISTRY_TOKEN": {
            "name": "TRIVY_REGISTRY_TOKEN",
            "valueFrom": {
                "secretKeyRef": {"name": s.secret_name, "key": "token", "optional": False}
            },
        }
    }


@pytest.mark.parametrize("mode", ["registry", "node"])
def test_trivy_lists_every_package_only_when_asked_for_the_sbom_rescans_keep(mode: str) -> None:
    node = {"node_name": "node-1", "credential": None} if mode == "node" else {}
    listed = container(manifests.scan_job(spec(mode=mode, list_packages=True, **node)))["args"]
    plain = container(manifests.scan_job(spec(mode=mode, **node)))["args"]
    assert "--list-all-pkgs" in listed
    assert "--list-all-pkgs" not in plain
    assert [a for a in listed if a != "--list-all-pkgs"] == plain
    assert listed[-1] == plain[-1]  # the target stays last


def test_anonymous_scan_has_no_credential_env() -> None:
    assert "env" not in container(manifests.scan_job(spec(credential=None)))


def test_insecure_registry_gets_trivys_insecure_variable_only() -> None:
    scan = dataclasses.replace(SCAN, insecure_registries=("127.0.0.1:5000",))
    variables = env(manifests.scan_job(spec(scan=scan)))
    assert variables["TRIVY_INSECURE"] == {"name": "TRIVY_INSECURE", "value": "true"}
    assert "TRIVY_NON_SSL" not in variables  # not a Trivy 0.76 variable


def test_db_repository_goes_to_standalone_scans_only() -> None:
    mirror = dataclasses.replace(CLUSTER, trivy_db_repository="mirror.corp:5000/trivy-db:2")
    args = container(manifests.scan_job(spec(cluster=mirror)))["args"]
    assert args[args.index("--db-repository") + 1] == "mirror.corp:5000/trivy-db:2"
    served = dataclasses.replace(mirror, trivy_server="http://trivy.scans:4954")
    assert "--db-repository" not in container(manifests.scan_job(spec(cluster=served)))["args"]


def test_secure_registry_gets_no_insecure_flags() -> None:
    scan = dataclasses.replace(SCAN, insecure_registries=("other:5000",))
    variables = env(manifests.scan_job(spec(scan=scan)))
    assert "TRIVY_INSECURE" not in variables
    assert "TRIVY_NON_SSL" not in variables


def test_trivy_server_replaces_nothing_but_adds_server_before_target() -> None:
    cluster = dataclasses.replace(CLUSTER, trivy_server="http://trivy.scans:4954")
    args = container(manifests.scan_job(spec(cluster=cluster)))["args"]
    assert args[0] == "image"
    assert args[args.index("--server") + 1] == "http://trivy.scans:4954"
    assert args[-1] == TARGET


def test_without_server_the_db_goes_into_an_empty_dir_cache() -> None:
    job = manifests.scan_job(spec())
    args = container(job)["args"]
    assert "--server" not in args
    cache = args[args.index("--cache-dir") + 1]
    mounts = {m["mountPath"]: m["name"] for m in container(job)["volumeMounts"]}
    volumes = {v["name"]: v for v in job["spec"]["template"]["spec"]["volumes"]}
    assert cache.startswith("/var/scanqueue/")
    assert "emptyDir" in volumes[mounts["/var/scanqueue"]]


def test_node_mode_runs_the_target_image_itself_on_its_node() -> None:
    s = spec(mode="node", credential=None, node_name="node-1")
    job = manifests.scan_job(s)
    pod = job["spec"]["template"]["spec"]
    assert pod["nodeName"] == "node-1"
    [init] = pod["initContainers"]
    assert init["image"] == "aquasec/trivy:0.76.0"
    assert init["command"] == [
        "cp",
        "/usr/local/bin/trivy",
        "/etc/ssl/certs/ca-certificates.crt",
        "/var/scanqueue/",
    ]
    assert {"name": "work", "mountPath": "/var/scanqueue"} in init["volumeMounts"]
    scan = container(job)
    assert scan["image"] == TARGET
    assert scan["imagePullPolicy"] == "Never"
    assert scan["command"] == ["/var/scanqueue/trivy"]
    assert scan["args"][:3] == ["rootfs", "--format", "json"]
    assert scan["args"][-1] == "/"
    assert scan["securityContext"]["runAsUser"] == 0
    assert pod["automountServiceAccountToken"] is False
    assert job["spec"]["suspend"] is True
    assert job["metadata"]["labels"]["scanqueue.io/mode"] == "node"


def test_labels_and_annotation_are_on_job_template_and_secret() -> None:
    s = spec()
    job = manifests.scan_job(s)
    secret = manifests.scan_secret(s, job_uid="uid-1", credential=Cred("bob", CANARY))
    for meta in (job["metadata"], job["spec"]["template"]["metadata"], secret["metadata"]):
        assert meta["labels"] == EXPECTED_LABELS
        assert meta["annotations"]["scanqueue.io/image"] == TARGET


def test_cluster_selector_matches_the_labels() -> None:
    selector = manifests.cluster_selector("prod-eu")
    pairs = dict(part.split("=") for part in selector.split(","))
    assert pairs.items() <= EXPECTED_LABELS.items()


def test_names_are_deterministic_dns_labels_that_differ_by_cluster_digest_attempt() -> None:
    name = manifests.job_name("prod-eu", DIGEST, 1)
    assert name == manifests.job_name("prod-eu", DIGEST, 1)
    assert re.fullmatch(r"sq-[0-9a-f]{16}-1", name)
    others = {
        manifests.job_name("prod-us", DIGEST, 1),
        manifests.job_name("prod-eu", "sha256:" + "cd" * 32, 1),
        manifests.job_name("prod-eu", DIGEST, 2),
    }
    assert name not in others and len(others) == 3
    longest = manifests.job_name("c" * 63, DIGEST, 10**9)
    secret = manifests.secret_name(longest)
    for n in (longest, secret):
        assert len(n) <= 63
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", n)
    assert spec().job_name == name and spec().secret_name == manifests.secret_name(name)


def test_basic_secret_holds_one_credential_owned_by_its_job() -> None:
    s = spec()
    secret = manifests.scan_secret(s, job_uid="uid-123", credential=Cred("bob", CANARY))
    validate(secret)
    assert secret["type"] == "Opaque"
    assert secret["immutable"] is True
    assert secret["metadata"]["name"] == s.secret_name
    assert secret["metadata"]["namespace"] == "scans"
    assert secret["metadata"]["ownerReferences"] == [
        {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "name": s.job_name,
            "uid": "uid-123",
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    decoded = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert decoded == {"username": "bob", "password": CANARY}


def test_token_secret_holds_only_the_token() -> None:
    s = spec(credential="token")
    secret = manifests.scan_secret(s, job_uid="uid-1", credential=Cred("bob", CANARY, CANARY_TOKEN))
    validate(secret)
    decoded = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert decoded == {"token": CANARY_TOKEN}


def test_secret_keys_are_the_ones_the_job_refers_to() -> None:
    for kind, cred in (("basic", Cred("bob", CANARY)), ("token", Cred(token=CANARY_TOKEN))):
        s = spec(credential=kind)
        refs = [
            e["valueFrom"]["secretKeyRef"]
            for e in container(manifests.scan_job(s))["env"]
            if "valueFrom" in e
        ]
        secret = manifests.scan_secret(s, job_uid="u", credential=cred)
        assert {r["name"] for r in refs} == {secret["metadata"]["name"]}
        assert {r["key"] for r in refs} == set(secret["data"])


def test_password_appears_nowhere_in_the_job_or_the_errors() -> None:
    for kind in ("basic", "token"):
        job_text = json.dumps(manifests.scan_job(spec(credential=kind)))
        assert CANARY not in job_text and CANARY_TOKEN not in job_text
        assert base64.b64encode(CANARY.encode()).decode() not in job_text
    with pytest.raises(errors.PermanentError) as caught:
        manifests.scan_secret(spec(), job_uid="u", credential=Cred("", CANARY))
    assert CANARY not in str(caught.value)


@pytest.mark.parametrize(
    ("changes", "cred", "uid", "says"),
    [
        ({"credential": None}, Cred("bob", CANARY), "u", "anonymously"),
        ({}, Cred("bob", ""), "u", "username and password"),
        ({"credential": "token"}, Cred("bob", CANARY), "u", "no token"),
        ({}, Cred("bob", CANARY), "", "uid"),
    ],
)
def test_secret_refuses_what_it_cannot_build(
    changes: dict[str, Any], cred: Cred, uid: str, says: str
) -> None:
    with pytest.raises(errors.PermanentError, match=says):
        manifests.scan_secret(spec(**changes), job_uid=uid, credential=cred)


@pytest.mark.parametrize(
    ("changes", "says"),
    [
        ({"digest": "sha256:abc"}, "digest"),
        ({"image": f"{IMAGE}@{DIGEST}"}, "without digest"),
        ({"scan_id": "not a label"}, "scan id"),
        ({"attempt": -1}, "attempt"),
        ({"mode": "node", "credential": None}, "node's name"),
        ({"mode": "node", "node_name": "n1"}, "never uses a credential"),
        ({"node_name": "n1"}, "not pinned"),
        ({"mode": "auto"}, "mode"),
        ({"scan": dataclasses.replace(SCAN, job_ttl_seconds=5)}, "job_ttl_seconds must exceed"),
    ],
)
def test_spec_rejects_inconsistent_input_naming_the_field(
    changes: dict[str, Any], says: str
) -> None:
    with pytest.raises(errors.PermanentError, match=says):
        spec(**changes)


def test_returned_manifests_share_no_mutable_parts() -> None:
    job = manifests.scan_job(spec())
    container(job)["volumeMounts"].append({"name": "x", "mountPath": "/x"})
    assert len(container(manifests.scan_job(spec()))["volumeMounts"]) == 2


def test_a_parsed_pull_secret_credential_builds_the_secret_without_showing_its_password() -> None:
    auth = base64.b64encode(f"bob:{CANARY}".encode()).decode()
    [cred] = credentials.parse_dockerconfig(
        json.dumps({"auths": {"127.0.0.1:5000": {"auth": auth}}}), source="team-a/regcred"
    )
    secret = manifests.scan_secret(spec(), job_uid="u", credential=cred)
    assert base64.b64decode(secret["data"]["password"]).decode() == CANARY
    assert CANARY not in json.dumps(secret["metadata"])


# Pod Security levels of every scan pod: tests/unit/test_pod_security.py (a rule checker).


# --- node mode: the scanned image does not decide how it is scanned ---------------------------

NODE = {"mode": "node", "credential": None, "node_name": "node-1"}
TRIVY = Path(sys.executable).with_name("trivy")


def _trivy_flags(*command: str) -> set[str]:
    """The long flags of the real Trivy's help for ``command`` (global flags included)."""
    out = subprocess.run(
        [str(TRIVY), *command, "--help"], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    return set(re.findall(r"^\s+(?:-\w, )?--([a-z0-9-]+)", out, flags=re.MULTILINE)) - {"help"}


def test_node_mode_sets_every_trivy_variable_the_image_could_set() -> None:
    scan = container(manifests.scan_job(spec(**NODE)))
    values = {e["name"]: e.get("value") for e in scan["env"]}
    flags = _trivy_flags("rootfs")
    assert len(flags) > 50, "the help output changed shape: the flag pattern finds nothing"
    for flag in flags:
        variable = "TRIVY_" + flag.upper().replace("-", "_")
        assert values.get(variable) == "", f"{variable} is left to the image"
    assert [n for n in values if n.startswith("TRIVY_") and values[n]] == []


def test_node_mode_sets_proxy_and_ca_variables_go_would_read_from_the_image() -> None:
    scan = container(manifests.scan_job(spec(**NODE)))
    values = {e["name"]: e.get("value") for e in scan["env"]}
    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "NO_PROXY", "no_proxy"):
        assert values[name] == "", name
    assert values["SSL_CERT_FILE"] == "/var/scanqueue/ca-certificates.crt"  # copied from our image
    assert values["SSL_CERT_DIR"].startswith("/var/scanqueue/")
    assert values["HOME"] == values["TMPDIR"] == "/tmp"
    assert len(values) == len(scan["env"]), "each variable once"


def test_node_mode_runs_in_our_directory_with_our_config_and_ignore_file() -> None:
    job = manifests.scan_job(spec(**NODE))
    template = job["spec"]["template"]
    pod = template["spec"]
    scan = container(job)
    mounts = {m["mountPath"]: m["name"] for m in scan["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert scan["workingDir"] == "/var/scanqueue"
    assert "emptyDir" in volumes[mounts["/var/scanqueue"]], "the image cannot put files there"
    args = scan["args"]
    config_file = args[args.index("--config") + 1]
    ignore_file = args[args.index("--ignorefile") + 1]
    directory, _, config_name = config_file.rpartition("/")
    assert ignore_file == f"{directory}/.trivyignore"
    items = {
        i["path"]: i["fieldRef"]["fieldPath"]
        for i in volumes[mounts[directory]]["downwardAPI"]["items"]
    }
    annotations = template["metadata"]["annotations"]
    for name in (config_name, ".trivyignore"):
        key = re.fullmatch(r"metadata\.annotations\['(.+)'\]", items[name]).group(1)
        assert key in annotations
    assert yaml.safe_load(annotations[manifests.ANNOTATION_CONFIG]) == {}
    ignored = annotations[manifests.ANNOTATION_IGNORE].splitlines()
    assert all(line.startswith("#") for line in ignored), "we ignore no finding"
    skipped = args[args.index("--skip-dirs") + 1].split(",")
    assert {"/var/scanqueue", directory} <= set(skipped), "our files are not scanned"
    assert args[-1] == "/"


def test_our_config_file_flags_are_ones_trivy_rootfs_knows() -> None:
    args = container(manifests.scan_job(spec(**NODE)))["args"]
    flags = _trivy_flags("rootfs")
    used = {a[2:] for a in args if a.startswith("--")}
    assert used <= flags, used - flags


def test_registry_mode_keeps_its_annotations_free_of_node_files() -> None:
    annotations = manifests.scan_job(spec())["spec"]["template"]["metadata"]["annotations"]
    assert manifests.ANNOTATION_CONFIG not in annotations


def test_node_mode_tolerates_no_execute_taints_only_for_the_scan_deadline() -> None:
    pod = manifests.scan_job(spec(**NODE))["spec"]["template"]["spec"]
    assert pod["tolerations"] == [
        {"operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 600}
    ]


def test_user_namespaces_are_asked_for_when_the_cluster_supports_them() -> None:
    assert "hostUsers" not in manifests.scan_job(spec(**NODE))["spec"]["template"]["spec"]
    cluster = dataclasses.replace(CLUSTER, scan_user_namespaces=True)
    job = manifests.scan_job(spec(**NODE, cluster=cluster))
    assert job["spec"]["template"]["spec"]["hostUsers"] is False
    validate(job)


@pytest.mark.parametrize("changes", [{}, NODE], ids=["registry", "node"])
def test_trivy_server_token_comes_from_a_secret_key_ref(changes: dict[str, Any]) -> None:
    cluster = dataclasses.replace(
        CLUSTER, trivy_server="http://trivy.scans:4954", trivy_server_token_secret="trivy-token"
    )
    job = manifests.scan_job(spec(**changes, cluster=cluster))
    variables = env(job)
    assert variables["TRIVY_TOKEN"] == {
        "name": "TRIVY_TOKEN",
        "valueFrom": {"secretKeyRef": {"name": "trivy-token", "key": "token", "optional": False}},
    }
    assert [e["name"] for e in container(job)["env"]].count("TRIVY_TOKEN") == 1
    validate(job)


def test_node_mode_skips_the_ca_bundle_it_mounts_into_the_image() -> None:
    cluster = dataclasses.replace(CLUSTER, ca_bundle_configmap="corp-ca")
    args = container(manifests.scan_job(spec(**NODE, cluster=cluster)))["args"]
    assert manifests.CA_DIR in args[args.index("--skip-dirs") + 1].split(",")
