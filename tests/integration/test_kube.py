"""The Kubernetes adapter over real HTTP: the official client against a scripted API server.

The scripted server answers what a real API server answers when things go
wrong (404, 409, 410, 429 with Retry-After, 5xx, 403, 422, ERROR watch events,
garbage), which the emulator has no reason to produce; the adapter must turn
each into the right scanqueue error, naming the object and never a secret.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from scanqueue import config, errors, kube, manifests
from tests.conftest import REGISTRY_PASSWORD, REGISTRY_USER
from tests.support import services
from tests.support.sim_fixtures import SimCluster

CANARY = "canary-pw-5b4a3c2d"


@dataclasses.dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes


Answer = tuple[int, dict[str, str], bytes]


class ScriptedAPI:
    """An HTTP/1.1 server on 127.0.0.1 answering with ``script(request)``; records requests."""

    def __init__(self, script: Callable[[Request], Answer]) -> None:
        self.script = script
        self.seen: list[Request] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                url = urllib.parse.urlsplit(self.path)
                request = Request(
                    self.command,
                    url.path,
                    urllib.parse.parse_qs(url.query),
                    dict(self.headers.items()),
                    self.rfile.read(length) if length else b"",
                )
                owner.seen.append(request)
                status, headers, body = owner.script(request)
                self.send_response(status)
                headers = {"Content-Type": "application/json", **headers}
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PATCH = do_DELETE = do_PUT = _any

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


def write_kubeconfig(
    path: Path, servers: dict[str, str], current: str, *, user: dict[str, Any] | None = None
) -> Path:
    """A kubeconfig with a context per server; ``user``: its one user's credentials."""
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": n, "cluster": {"server": s}} for n, s in servers.items()],
                "users": [{"name": "u", "user": user or {}}],
                "contexts": [{"name": n, "context": {"cluster": n, "user": "u"}} for n in servers],
                "current-context": current,
            }
        )
    )
    return path


@pytest.fixture
def scripted(tmp_path: Path) -> Iterator[Callable[[Callable[[Request], Answer]], Any]]:
    """Start a scripted API server; return (server, ApiClient) for it. Stopped after the test."""
    started: list[ScriptedAPI] = []

    def start(script: Callable[[Request], Answer]) -> tuple[ScriptedAPI, kube.ApiClient]:
        server = ScriptedAPI(script)
        started.append(server)
        kubeconfig = write_kubeconfig(
            tmp_path / f"kubeconfig-{server.port}",
            {"scripted": f"http://127.0.0.1:{server.port}"},
            "scripted",
        )
        cluster = config.ClusterSettings(name="scripted", kubeconfig=str(kubeconfig))
        return server, kube.api_client(cluster)

    yield start
    for server in started:
        server.stop()


def status(code: int, reason: str, message: str, **extra: Any) -> Answer:
    body = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code}
    body.update(reason=reason, message=message, **extra)
    return code, {}, json.dumps(body).encode()


def ok(obj: dict[str, Any]) -> Answer:
    return 200, {}, json.dumps(obj).encode()


# ------------------------------------------------------------------ clients


def test_api_client_uses_the_kubeconfig_context_it_is_given(
    tmp_path: Path, scripted: Callable[..., Any]
) -> None:
    server, _ = scripted(lambda r: ok({"kind": "Secret", "metadata": {"name": "s"}}))
    kubeconfig = write_kubeconfig(
        tmp_path / "two-contexts",
        {"other": "http://127.0.0.1:1", "mine": f"http://127.0.0.1:{server.port}"},
        "other",
    )
    cluster = config.ClusterSettings(name="c", kubeconfig=str(kubeconfig), context="mine")
    api = kube.api_client(cluster)
    assert kube.read_secret(api=api, namespace="ns", name="s")["metadata"]["name"] == "s"
    assert server.seen[-1].path == "/api/v1/namespaces/ns/secrets/s"


def test_api_client_names_the_cluster_and_file_when_kubeconfig_is_missing(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    cluster = config.ClusterSettings(name="prod-eu", kubeconfig=str(missing))
    with pytest.raises(errors.ConfigError, match=r"cluster prod-eu: cannot load .*nope\.yaml"):
        kube.api_client(cluster)


def test_api_client_names_an_unknown_context(tmp_path: Path) -> None:
    kubeconfig = write_kubeconfig(tmp_path / "k", {"a": "http://127.0.0.1:1"}, "a")
    cluster = config.ClusterSettings(name="c", kubeconfig=str(kubeconfig), context="zzz")
    with pytest.raises(errors.ConfigError, match="context 'zzz'"):
        kube.api_client(cluster)


def test_in_cluster_client_outside_a_cluster_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_PORT", raising=False)
    cluster = config.ClusterSettings(name="here", in_cluster=True)
    with pytest.raises(errors.ConfigError, match="cluster here: cannot load the in-cluster"):
        kube.api_client(cluster)


def test_clients_for_two_clusters_do_not_share_state(
    tmp_path: Path, scripted: Callable[..., Any]
) -> None:
    first, api_one = scripted(lambda r: ok({"kind": "Secret", "metadata": {"name": "one"}}))
    second, api_two = scripted(lambda r: ok({"kind": "Secret", "metadata": {"name": "two"}}))
    assert kube.read_secret(api=api_one, namespace="n", name="x")["metadata"]["name"] == "one"
    assert kube.read_secret(api=api_two, namespace="n", name="x")["metadata"]["name"] == "two"
    assert len(first.seen) == 1 and len(second.seen) == 1


# ------------------------------------------------------------------ errors


def test_missing_object_is_not_found_naming_verb_kind_and_object(
    scripted: Callable[..., Any],
) -> None:
    _, api = scripted(lambda r: status(404, "NotFound", 'secrets "regcred" not found'))
    with pytest.raises(kube.NotFound, match=r"read Secret team-a/regcred: HTTP 404") as caught:
        kube.read_secret(api=api, namespace="team-a", name="regcred")
    assert isinstance(caught.value, errors.PermanentError)


def test_throttling_is_temporary_with_the_servers_retry_after(
    scripted: Callable[..., Any],
) -> None:
    def script(r: Request) -> Answer:
        code, _, body = status(429, "TooManyRequests", "slow down")
        return code, {"Retry-After": "7"}, body

    _, api = scripted(script)
    with pytest.raises(errors.TemporaryError, match="read ServiceAccount a/default") as caught:
        kube.read_service_account(api=api, namespace="a", name="default")
    assert caught.value.delay == 7.0


@pytest.mark.parametrize("code", [500, 503, 504])
def test_server_errors_are_temporary(scripted: Callable[..., Any], code: int) -> None:
    _, api = scripted(lambda r: status(code, "InternalError", "etcd is sad"))
    with pytest.raises(errors.TemporaryError, match=f"list Job scans: HTTP {code}"):
        kube.list_jobs(api=api, namespace="scans", label_selector="a=b")


@pytest.mark.parametrize(
    ("code", "reason"), [(400, "BadRequest"), (403, "Forbidden"), (422, "Invalid")]
)
def test_refusals_are_permanent(scripted: Callable[..., Any], code: int, reason: str) -> None:
    _, api = scripted(lambda r: status(code, reason, "no"))
    with pytest.raises(errors.PermanentError, match=f"create Job scans/sq-1: HTTP {code}"):
        kube.create_job(
            api=api, body={"kind": "Job", "metadata": {"name": "sq-1", "namespace": "scans"}}
        )


def test_forbidden_says_which_permission_to_grant(scripted: Callable[..., Any]) -> None:
    _, api = scripted(lambda r: status(403, "Forbidden", "secrets is forbidden"))
    with pytest.raises(
        errors.PermanentError, match=r"may not delete secrets in namespace scans: grant it"
    ):
        kube.delete_secret(api=api, namespace="scans", name="s")


def test_refused_secret_never_echoes_its_content(scripted: Callable[..., Any]) -> None:
    causes = [{"field": "data[password]", "message": f"Invalid value: {CANARY!r}"}]
    answer = status(422, "Invalid", f"Secret is invalid: {CANARY}", details={"causes": causes})
    _, api = scripted(lambda r: answer)
    body = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "sq-1-cred", "namespace": "scans"},
        "data": {"password": CANARY},
    }
    with pytest.raises(errors.PermanentError) as caught:
        kube.create_secret(api=api, body=body)
    message = str(caught.value)
    assert "create Secret scans/sq-1-cred: HTTP 422 Invalid data[password]" in message
    assert CANARY not in message
    assert caught.value.__cause__ is None
    assert CANARY not in repr(caught.value.__context__)


def test_created_objects_go_to_the_api_server_as_given(scripted: Callable[..., Any]) -> None:
    """Job and Secret bodies are sent as they are (not through the client's models): the
    API server judges them, and a refusal of a Secret names fields, never values (a
    client-side model check echoed the value it refused)."""
    answer = status(422, "Invalid", f"Secret is invalid: {CANARY}",
                    details={"causes": [{"field": "data[password]"}]})  # fmt: skip
    server, api = scripted(lambda r: answer if "secrets" in r.path else ok(json.loads(r.body)))
    job = {"apiVersion": "batch/v1", "kind": "Job",
           "metadata": {"name": "sq-1", "namespace": "scans", "labels": {"a": "b"}},
           "spec": {"suspend": True, "backoffLimit": 0, "template": {"spec": {"containers": [
               {"name": "trivy", "image": "trivy:1", "args": ["image", "x"]}]}}}}  # fmt: skip
    assert kube.create_job(api=api, body=job) == job
    assert json.loads(server.seen[-1].body) == job
    assert server.seen[-1].method == "POST" and server.seen[-1].path.endswith("/scans/jobs")
    secret = {"apiVersion": "v1", "kind": "Secret",
              "metadata": {"name": "sq-1-cred", "namespace": "scans"},
              "data": {"password": [CANARY]}}  # fmt: skip
    with pytest.raises(errors.PermanentError) as caught:
        kube.create_secret(api=api, body=secret)
    assert "create Secret scans/sq-1-cred: HTTP 422 Invalid data[password]" in str(caught.value)
    assert CANARY not in str(caught.value) and caught.value.__cause__ is None
    assert json.loads(server.seen[-1].body) == secret


def test_unreachable_api_server_is_temporary(tmp_path: Path) -> None:
    port = services.free_port()  # nothing listens there
    kubeconfig = write_kubeconfig(tmp_path / "k", {"gone": f"http://127.0.0.1:{port}"}, "gone")
    api = kube.api_client(config.ClusterSettings(name="gone", kubeconfig=str(kubeconfig)))
    with pytest.raises(errors.TemporaryError, match="read Job scans/sq-1: cannot reach"):
        kube.read_job(api=api, namespace="scans", name="sq-1")


def test_an_answer_that_is_not_json_is_temporary(scripted: Callable[..., Any]) -> None:
    _, api = scripted(lambda r: (200, {"Content-Type": "text/html"}, b"<html>proxy</html>"))
    with pytest.raises(errors.TemporaryError, match=r"read Secret a/b: .*not JSON"):
        kube.read_secret(api=api, namespace="a", name="b")


def test_read_owner_refuses_a_kind_it_does_not_know(scripted: Callable[..., Any]) -> None:
    server, api = scripted(lambda r: ok({}))
    with pytest.raises(errors.PermanentError, match="read Rollout a/r: owner kind not supported"):
        kube.read_owner(api=api, kind="Rollout", namespace="a", name="r")
    assert server.seen == []


# ------------------------------------------------------------------ protocol details


def test_list_pods_follows_continue_tokens_and_returns_the_list_version(
    scripted: Callable[..., Any],
) -> None:
    def script(r: Request) -> Answer:
        token = r.query.get("continue", [""])[0]
        page = int(token or 0)
        items = [{"metadata": {"name": f"p{page}-{i}"}} for i in range(2)]
        meta: dict[str, Any] = {"resourceVersion": f"rv{page}"}
        if page < 2:
            meta["continue"] = str(page + 1)
        return ok({"kind": "PodList", "metadata": meta, "items": items})

    server, api = scripted(script)
    items, version = kube.list_pods(api=api, namespace=None, page_size=2)
    assert [p["metadata"]["name"] for p in items] == [
        "p0-0", "p0-1", "p1-0", "p1-1", "p2-0", "p2-1"
    ]  # fmt: skip
    assert version == "rv2"
    assert [r.path for r in server.seen] == ["/api/v1/pods"] * 3
    assert [r.query["limit"] for r in server.seen] == [["2"]] * 3


def test_watch_requests_bookmarks_and_yields_raw_events(scripted: Callable[..., Any]) -> None:
    pod = {"kind": "Pod", "metadata": {"name": "a", "resourceVersion": "5"}}
    events = [
        {"type": "ADDED", "object": pod},
        {"type": "BOOKMARK", "object": {"kind": "Pod", "metadata": {"resourceVersion": "9"}}},
        {"type": "DELETED", "object": {**pod, "metadata": {"name": "a", "resourceVersion": "10"}}},
    ]
    body = b"".join(json.dumps(e).encode() + b"\n" for e in events)
    server, api = scripted(lambda r: (200, {}, body))
    got = list(
        kube.watch_pods(api=api, namespace="team-a", resource_version="4", timeout_seconds=5)
    )
    assert got == [(e["type"], e["object"]) for e in events]
    [request] = server.seen
    assert request.path == "/api/v1/namespaces/team-a/pods"
    assert request.query["watch"] == ["true"]
    assert request.query["allowWatchBookmarks"] == ["true"]
    assert request.query["resourceVersion"] == ["4"]
    assert request.query["timeoutSeconds"] == ["5"]


def test_watch_error_event_410_raises_gone(scripted: Callable[..., Any]) -> None:
    expired = {
        "kind": "Status",
        "code": 410,
        "reason": "Expired",
        "message": "too old resource version",
    }
    lines = [
        {"type": "ADDED", "object": {"metadata": {"name": "a"}}},
        {"type": "ERROR", "object": expired},
    ]  # fmt: skip
    body = b"".join(json.dumps(e).encode() + b"\n" for e in lines)
    _, api = scripted(lambda r: (200, {}, body))
    events = kube.watch_pods(api=api, namespace=None, resource_version="1", timeout_seconds=5)
    assert next(events)[0] == "ADDED"
    with pytest.raises(kube.Gone, match="watch Pod all namespaces: HTTP 410"):
        next(events)


def test_watch_answered_410_raises_gone(scripted: Callable[..., Any]) -> None:
    _, api = scripted(lambda r: status(410, "Expired", "too old resource version"))
    with pytest.raises(kube.Gone) as caught:
        list(kube.watch_pods(api=api, namespace=None, resource_version="1", timeout_seconds=5))
    assert isinstance(caught.value, errors.TemporaryError)


def test_resume_job_sends_a_merge_patch_unsuspending_it(scripted: Callable[..., Any]) -> None:
    server, api = scripted(lambda r: ok({"kind": "Job", "spec": {"suspend": False}}))
    kube.resume_job(api=api, namespace="scans", name="sq-1")
    [request] = server.seen
    assert (request.method, request.path) == ("PATCH", "/apis/batch/v1/namespaces/scans/jobs/sq-1")
    assert request.headers["Content-Type"] == "application/merge-patch+json"
    assert json.loads(request.body) == {"spec": {"suspend": False}}


def test_delete_job_propagates_in_the_background_and_tolerates_absence(
    scripted: Callable[..., Any],
) -> None:
    answers = iter([ok({"kind": "Status", "status": "Success"}), status(404, "NotFound", "gone")])
    server, api = scripted(lambda r: next(answers))
    assert kube.delete_job(api=api, namespace="scans", name="sq-1") is True
    assert kube.delete_job(api=api, namespace="scans", name="sq-1") is False
    first = server.seen[0]
    assert first.method == "DELETE"
    sent = json.loads(first.body) if first.body else {}
    propagation = sent.get("propagationPolicy") or first.query.get("propagationPolicy", [""])[0]
    assert propagation == "Background"


# ------------------------------------------------------------------ against the emulator

SCANS = "scanqueue-scans"


@dataclasses.dataclass
class World:
    sim: SimCluster
    cluster: config.ClusterSettings
    scan: config.ScanSettings
    api: kube.ApiClient
    registry: services.Registry

    @property
    def user(self) -> tuple[str, str]:
        return next(iter(self.registry.users.items()))

    def spec(self, digest: str, **changes: Any) -> manifests.ScanSpec:
        values: dict[str, Any] = {
            "cluster": self.cluster,
            "scan": self.scan,
            "image": f"{self.registry.host}/team/app",
            "digest": digest,
            "mode": "registry",
            "scan_id": "scan-1",
            "attempt": 1,
            "credential": "basic",
        }
        values.update(changes)
        return manifests.ScanSpec(**values)

    def finished(self, name: str) -> dict[str, Any]:
        """Wait until the Job ``name`` is Complete or Failed; return it."""

        def done() -> dict[str, Any] | None:
            job = kube.read_job(api=self.api, namespace=SCANS, name=name)
            conditions = (job.get("status") or {}).get("conditions") or []
            if any(
                c["type"] in ("Complete", "Failed") and c["status"] == "True" for c in conditions
            ):
                return job
            return None

        return self.sim.wait_for(done, timeout=60, what=f"job {name} finished")

    def submit(
        self, spec: manifests.ScanSpec, credential: Any | None
    ) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """Create the Job suspended, its owned Secret, then resume it, as the workers do."""
        job = kube.create_job(api=self.api, body=manifests.scan_job(spec))
        secret = None
        if credential is not None:
            body = manifests.scan_secret(
                spec, job_uid=job["metadata"]["uid"], credential=credential
            )
            secret = kube.create_secret(api=self.api, body=body)
        kube.resume_job(api=self.api, namespace=SCANS, name=spec.job_name)
        return job, secret


@dataclasses.dataclass(frozen=True)
class Basic:
    username: str
    password: str = dataclasses.field(repr=False)
    token: str = ""


def namespace(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}


@pytest.fixture
def world(sim: SimCluster, registry: services.Registry) -> Iterator[World]:
    for name in (SCANS, "team-a"):
        sim.create(namespace(name))
    cluster = config.ClusterSettings(
        name="sim", kubeconfig=str(sim.kubeconfig), scan_namespace=SCANS
    )
    scan = config.ScanSettings(
        job_deadline_seconds=60, job_ttl_seconds=600, insecure_registries=(registry.host,)
    )
    api = kube.api_client(cluster)
    yield World(sim, cluster, scan, api, registry)
    api.close()


def test_a_scan_job_runs_with_its_owned_secret_and_both_go_when_it_is_deleted(
    world: World,
) -> None:
    digest = world.registry.push("team/app", "kube-1", content="kube-1")
    spec = world.spec(digest)
    user, password = world.user
    job, secret = world.submit(spec, Basic(user, password))
    assert job["spec"]["suspend"] is True
    assert secret is not None
    assert secret["metadata"]["ownerReferences"][0]["uid"] == job["metadata"]["uid"]

    done = world.finished(spec.job_name)
    assert done["status"].get("succeeded") == 1
    [pod] = kube.pods_of_job(api=world.api, namespace=SCANS, name=spec.job_name)
    log = kube.read_pod_log(
        api=world.api, namespace=SCANS, name=pod["metadata"]["name"], container="trivy",
        limit_bytes=10_000_000,
    )  # fmt: skip
    report = json.loads(log)
    assert report["SchemaVersion"] == 2
    assert password not in json.dumps([done, pod])

    selector = manifests.cluster_selector("sim")
    listed = kube.list_jobs(api=world.api, namespace=SCANS, label_selector=selector)
    assert [j["metadata"]["name"] for j in listed] == [spec.job_name]

    assert kube.delete_job(api=world.api, namespace=SCANS, name=spec.job_name) is True
    world.sim.wait_for(
        lambda: (
            world.sim.get("Secret", SCANS, spec.secret_name) is None
            and not world.sim.list("Pod", SCANS)
        ),
        what="secret and pod garbage-collected",
    )
    assert kube.list_jobs(api=world.api, namespace=SCANS, label_selector=selector) == []
    assert kube.delete_job(api=world.api, namespace=SCANS, name=spec.job_name) is False
    assert kube.delete_secret(api=world.api, namespace=SCANS, name=spec.secret_name) is False


def test_a_suspended_job_starts_no_pod_until_resumed(world: World) -> None:
    digest = world.registry.push("team/app", "kube-2", content="kube-2")
    spec = world.spec(digest, credential=None)
    kube.create_job(api=world.api, body=manifests.scan_job(spec))
    assert kube.pods_of_job(api=world.api, namespace=SCANS, name=spec.job_name) == []
    resumed = kube.resume_job(api=world.api, namespace=SCANS, name=spec.job_name)
    assert resumed["spec"]["suspend"] is False
    world.finished(spec.job_name)
    assert len(kube.pods_of_job(api=world.api, namespace=SCANS, name=spec.job_name)) == 1


def test_the_registry_refusing_the_credential_fails_the_job_with_trivys_message(
    world: World,
) -> None:
    digest = world.registry.push("team/app", "kube-3", content="kube-3")
    spec = world.spec(digest)
    world.submit(spec, Basic(world.user[0], "wrong-password"))
    done = world.finished(spec.job_name)
    assert done["status"].get("failed") == 1
    [pod] = kube.pods_of_job(api=world.api, namespace=SCANS, name=spec.job_name)
    log = kube.read_pod_log(
        api=world.api, namespace=SCANS, name=pod["metadata"]["name"], container="trivy",
        limit_bytes=100_000,
    )  # fmt: skip
    assert "UNAUTHORIZED: authentication required" in log


def test_creating_the_same_job_and_secret_again_adopts_them(world: World) -> None:
    digest = world.registry.push("team/app", "kube-4", content="kube-4")
    spec = world.spec(digest)
    first = kube.create_job(api=world.api, body=manifests.scan_job(spec))
    again = kube.create_job(api=world.api, body=manifests.scan_job(spec))
    assert again["metadata"]["uid"] == first["metadata"]["uid"]
    body = manifests.scan_secret(spec, job_uid=first["metadata"]["uid"], credential=Basic("a", "b"))
    made = kube.create_secret(api=world.api, body=body)
    adopted = kube.create_secret(api=world.api, body=body)
    assert adopted["metadata"]["uid"] == made["metadata"]["uid"]
    assert len(world.sim.list("Job", SCANS)) == 1
    assert len(world.sim.list("Secret", SCANS)) == 1


def test_a_secret_left_by_a_deleted_job_of_the_same_name_is_a_conflict(world: World) -> None:
    digest = world.registry.push("team/app", "kube-5", content="kube-5")
    spec = world.spec(digest)
    job = kube.create_job(api=world.api, body=manifests.scan_job(spec))
    body = manifests.scan_secret(spec, job_uid=job["metadata"]["uid"], credential=Basic("a", "b"))
    kube.create_secret(api=world.api, body=body)
    other = manifests.scan_secret(spec, job_uid="another-uid", credential=Basic("a", "b"))
    with pytest.raises(kube.Conflict, match=f"create Secret {SCANS}/{spec.secret_name}"):
        kube.create_secret(api=world.api, body=other)


def test_node_mode_scans_an_image_a_pod_on_that_node_runs(world: World) -> None:
    digest = world.registry.push("team/app", "kube-6", content="kube-6")
    image = f"{world.registry.host}/team/app@{digest}"
    # the node pulls the image with its own login (the kubelet now runs the real Trivy in it)
    world.sim.trivy.node_auth[world.registry.host] = (REGISTRY_USER, REGISTRY_PASSWORD)
    world.sim.create(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "app", "namespace": "team-a"},
            "spec": {"nodeName": "node-1", "containers": [{"name": "app", "image": image}]},
        }
    )
    world.sim.wait_for(
        lambda: (
            (world.sim.get("Pod", "team-a", "app") or {}).get("status", {}).get("phase")
            == "Running"
        ),
        what="workload pod running",
    )
    spec = world.spec(digest, mode="node", credential=None, node_name="node-1")
    world.submit(spec, None)
    assert world.finished(spec.job_name)["status"].get("succeeded") == 1

    elsewhere = world.spec("sha256:" + "0" * 64, mode="node", credential=None, node_name="node-1")
    world.submit(elsewhere, None)

    def never_pull() -> bool:
        pods = kube.pods_of_job(api=world.api, namespace=SCANS, name=elsewhere.job_name)
        statuses = [s for p in pods for s in (p.get("status") or {}).get("containerStatuses") or []]
        return any((s.get("state") or {}).get("waiting", {}).get("reason") == "ErrImageNeverPull"
                   for s in statuses)  # fmt: skip

    world.sim.wait_for(never_pull, what="ErrImageNeverPull")


def test_reads_return_wire_dicts_and_missing_objects_are_not_found(world: World) -> None:
    world.sim.create(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "kubernetes.io/dockerconfigjson",
            "metadata": {"name": "regcred", "namespace": "team-a"},
            "data": {".dockerconfigjson": "e30="},
        }
    )
    world.sim.create(
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": "builder", "namespace": "team-a"},
            "imagePullSecrets": [{"name": "regcred"}],
        }
    )
    secret = kube.read_secret(api=world.api, namespace="team-a", name="regcred")
    assert secret["type"] == "kubernetes.io/dockerconfigjson"
    assert secret["data"] == {".dockerconfigjson": "e30="}
    account = kube.read_service_account(api=world.api, namespace="team-a", name="builder")
    assert account["imagePullSecrets"] == [{"name": "regcred"}]
    with pytest.raises(kube.NotFound, match="read Secret team-a/nope"):
        kube.read_secret(api=world.api, namespace="team-a", name="nope")


def test_read_owner_reads_replicasets_and_jobs(world: World) -> None:
    template = {
        "metadata": {"labels": {"app": "web"}},
        "spec": {"containers": [{"name": "web", "image": "nginx:1.27"}]},
    }
    world.sim.create(
        {
            "apiVersion": "apps/v1",
            "kind": "ReplicaSet",
            "metadata": {"name": "web-abc", "namespace": "team-a", "labels": {"app": "web"}},
            "spec": {
                "replicas": 0,
                "selector": {"matchLabels": {"app": "web"}},
                "template": template,
            },
        }
    )
    rs = kube.read_owner(api=world.api, kind="ReplicaSet", namespace="team-a", name="web-abc")
    assert (rs["kind"], rs["metadata"]["labels"]) == ("ReplicaSet", {"app": "web"})
    digest = world.registry.push("team/app", "kube-7", content="kube-7")
    spec = world.spec(digest, credential=None)
    kube.create_job(api=world.api, body=manifests.scan_job(spec))
    job = kube.read_owner(api=world.api, kind="Job", namespace=SCANS, name=spec.job_name)
    assert job["kind"] == "Job"
    with pytest.raises(kube.NotFound):
        kube.read_owner(api=world.api, kind="Job", namespace=SCANS, name="missing")


def pod(name: str, namespace: str = "team-a") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"containers": [{"name": "c", "image": "nginx:1.27"}]},
    }


def test_list_pods_pages_through_everything_and_a_watch_continues_from_it(world: World) -> None:
    for i in range(23):
        world.sim.create(pod(f"p{i:02d}", "team-a" if i % 2 else "default"))
    items, version = kube.list_pods(api=world.api, namespace=None, page_size=5)
    names = sorted(p["metadata"]["name"] for p in items)
    assert names == [f"p{i:02d}" for i in range(23)]
    assert world.sim.request_counts()[("list", "pods")] == 5
    team, _ = kube.list_pods(api=world.api, namespace="team-a")
    assert {p["metadata"]["namespace"] for p in team} == {"team-a"}

    world.sim.create(pod("late"))
    world.sim.delete("Pod", "team-a", "p01")
    events = kube.watch_pods(
        api=world.api, namespace=None, resource_version=version, timeout_seconds=5
    )
    seen: list[tuple[str, str]] = []
    for kind, obj in events:
        if kind != "BOOKMARK":
            seen.append((kind, obj["metadata"]["name"]))
        if ("DELETED", "p01") in seen:
            break
    assert ("ADDED", "late") in seen
    assert ("DELETED", "p01") in seen


def test_watch_ends_when_the_server_times_it_out_and_sends_bookmarks(
    sim_factory: Callable[..., SimCluster],
) -> None:
    sim = sim_factory(bookmark_interval=0.2)
    cluster = config.ClusterSettings(name="b", kubeconfig=str(sim.kubeconfig))
    api = kube.api_client(cluster)
    try:
        _, version = kube.list_pods(api=api, namespace=None)
        kinds = [k for k, _ in kube.watch_pods(
            api=api, namespace="default", resource_version=version, timeout_seconds=1
        )]  # fmt: skip
        assert "BOOKMARK" in kinds
        assert sim.request_counts()[("watch", "pods")] == 1
    finally:
        api.close()


def test_an_expired_watch_raises_gone(world: World) -> None:
    _, version = kube.list_pods(api=world.api, namespace=None)
    world.sim.faults.expire_watches("pods")
    with pytest.raises(kube.Gone):
        list(
            kube.watch_pods(
                api=world.api, namespace=None, resource_version=version, timeout_seconds=5
            )
        )


def test_a_watch_cut_by_the_network_is_temporary(world: World) -> None:
    _, version = kube.list_pods(api=world.api, namespace=None)
    events = kube.watch_pods(
        api=world.api, namespace=None, resource_version=version, timeout_seconds=30
    )
    world.sim.create(pod("first"))
    assert next(events)[1]["metadata"]["name"] == "first"
    world.sim.faults.drop_watches()
    with pytest.raises(errors.TemporaryError, match="watch Pod all namespaces"):
        for _ in events:
            pass


def test_throttled_requests_to_the_emulator_carry_retry_after(world: World) -> None:
    world.sim.faults.fail(429, verb="get", resource="secrets", retry_after=3)
    with pytest.raises(errors.TemporaryError, match="read Secret team-a/x: HTTP 429") as caught:
        kube.read_secret(api=world.api, namespace="team-a", name="x")
    assert caught.value.delay == 3.0
    world.sim.faults.fail(503, verb="create", resource="jobs")
    spec = world.spec("sha256:" + "1" * 64, credential=None)
    with pytest.raises(
        errors.TemporaryError, match=f"create Job {SCANS}/{spec.job_name}: HTTP 503"
    ):
        kube.create_job(api=world.api, body=manifests.scan_job(spec))


def test_list_secrets_finds_scan_secrets_by_label_only(world: World) -> None:
    digest = world.registry.push("team/app", "kube-8", content="kube-8")
    spec = world.spec(digest)
    job = kube.create_job(api=world.api, body=manifests.scan_job(spec))
    body = manifests.scan_secret(spec, job_uid=job["metadata"]["uid"], credential=Basic("a", "b"))
    kube.create_secret(api=world.api, body=body)
    world.sim.create(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "unrelated", "namespace": SCANS},
            "data": {"x": "eA=="},
        }
    )
    found = kube.list_secrets(
        api=world.api, namespace=SCANS, label_selector=manifests.cluster_selector("sim")
    )
    assert [s["metadata"]["name"] for s in found] == [spec.secret_name]
    other = kube.list_secrets(
        api=world.api, namespace=SCANS, label_selector=manifests.cluster_selector("elsewhere")
    )
    assert other == []


def test_requests_are_the_ones_the_clients_own_methods_send(tmp_path: Path) -> None:
    """``kube.client.request`` sends what the official client's generated methods send for
    the same call: method, path, query, bearer token, content type and JSON body; only the
    client's per-call argument validation is skipped (bench/README, "pipeline")."""
    import kubernetes

    server = ScriptedAPI(lambda request: ok({"kind": "Anything", "metadata": {"name": "x"}}))
    try:
        kubeconfig = write_kubeconfig(
            tmp_path / "kubeconfig", {"c": f"http://127.0.0.1:{server.port}"}, "c",
            user={"token": CANARY},
        )  # fmt: skip
        api = kube.api_client(config.ClusterSettings(name="c", kubeconfig=str(kubeconfig)))
        core, batch = kubernetes.client.CoreV1Api(api), kubernetes.client.BatchV1Api(api)
        apps = kubernetes.client.AppsV1Api(api)
        raw = {"_preload_content": False}
        job = {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": "scan-1", "namespace": "scans"},
            "spec": {
                "suspend": True,
                "template": {
                    "spec": {"restartPolicy": "Never", "containers": [{"name": "t", "image": "x"}]}
                },
            },
        }
        secret = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                  "metadata": {"name": "scan-1", "namespace": "scans"},
                  "stringData": {"password": CANARY}}  # fmt: skip
        pairs: list[tuple[Callable[[], Any], Callable[[], Any]]] = [
            (lambda: kube.read_secret(api=api, namespace="team a", name="reg/cred"),
             lambda: core.read_namespaced_secret("reg/cred", "team a", **raw)),
            (lambda: kube.read_service_account(api=api, namespace="t", name="default"),
             lambda: core.read_namespaced_service_account("default", "t", **raw)),
            (lambda: kube.read_owner(api=api, kind="ReplicaSet", namespace="t", name="rs"),
             lambda: apps.read_namespaced_replica_set("rs", "t", **raw)),
            (lambda: kube.read_owner(api=api, kind="CronJob", namespace="t", name="cj"),
             lambda: batch.read_namespaced_cron_job("cj", "t", **raw)),
            (lambda: kube.create_job(api=api, body=job),
             lambda: batch.create_namespaced_job("scans", job, **raw)),
            (lambda: kube.create_secret(api=api, body=secret),
             lambda: core.create_namespaced_secret("scans", secret, **raw)),
            (lambda: kube.resume_job(api=api, namespace="scans", name="scan-1"),
             lambda: batch.patch_namespaced_job(
                 "scan-1", "scans", {"spec": {"suspend": False}},
                 _content_type="application/merge-patch+json", **raw)),
            (lambda: kube.delete_job(api=api, namespace="scans", name="scan-1"),
             lambda: batch.delete_namespaced_job(
                 "scan-1", "scans", propagation_policy="Background", **raw)),
            (lambda: kube.delete_secret(api=api, namespace="scans", name="scan-1"),
             lambda: core.delete_namespaced_secret("scan-1", "scans", **raw)),
            (lambda: kube.read_pod_log_bytes(api=api, namespace="scans", name="p",
                                             container="trivy", limit_bytes=1000),
             lambda: core.read_namespaced_pod_log("p", "scans", container="trivy",
                                                  limit_bytes=1000, **raw)),
            (lambda: kube.pods_of_job(api=api, namespace="scans", name="scan-1"),
             lambda: core.list_namespaced_pod(
                 "scans", label_selector="batch.kubernetes.io/job-name=scan-1", limit=500, **raw)),
            (lambda: kube.list_pods(api=api, namespace=None, page_size=7),
             lambda: core.list_pod_for_all_namespaces(limit=7, **raw)),
            (lambda: _drain(kube.watch_pods(api=api, namespace=None, resource_version="12",
                                            timeout_seconds=30)),
             lambda: core.list_pod_for_all_namespaces(
                 watch=True, resource_version="12", timeout_seconds=30,
                 allow_watch_bookmarks=True, **raw)),
            (lambda: _drain(kube.watch_jobs(api=api, namespace="scans", label_selector="a=b",
                                            resource_version="7", timeout_seconds=60)),
             lambda: batch.list_namespaced_job(
                 "scans", watch=True, label_selector="a=b", resource_version="7",
                 timeout_seconds=60, allow_watch_bookmarks=True, **raw)),
        ]  # fmt: skip
        for ours, theirs in pairs:
            ours()
            mine = server.seen[-1]
            theirs()
            official = server.seen[-1]
            assert (mine.method, mine.path, mine.query) == (
                official.method, official.path, official.query
            )  # fmt: skip
            sent = {name.lower(): value for name, value in mine.headers.items()}
            expected = {name.lower(): value for name, value in official.headers.items()}
            assert sent["authorization"] == expected["authorization"] == f"Bearer {CANARY}"
            for header in ("accept", "user-agent"):
                assert sent.get(header) == expected.get(header), header
            # a body goes as JSON, saying so (as kubectl does; the client's create methods
            # leave the header out and the API server takes JSON)
            assert sent.get("content-type") == expected.get("content-type", "application/json") \
                if mine.body else "content-type" not in sent  # fmt: skip
            if official.body:
                assert json.loads(mine.body) == json.loads(official.body)
            else:
                assert not mine.body
    finally:
        server.stop()


def _drain(events: Iterator[Any]) -> None:
    """Read a watch to its end (the scripted answer holds no whole event line: none)."""
    assert list(events) == []


def test_the_token_refresh_runs_at_most_once_per_interval_and_stays_throttled(
    tmp_path: Path,
) -> None:
    """The client runs its configuration's refresh hook before every request; scanqueue's
    clients run it at most once per ``TOKEN_CHECK_SECONDS`` (the kubeconfig loader renews a
    token five minutes before it expires). The loaders' hooks install themselves again
    each time they run: the throttle must stay in front of them."""
    import time

    from scanqueue.kube import client

    class Configuration:  # a loader's hook, as kubernetes' loaders write theirs
        refresh_api_key_hook: Any = None

    runs: list[int] = []

    def loader_hook(target: Any) -> None:
        runs.append(1)
        target.refresh_api_key_hook = loader_hook  # what _set_config does each time

    configuration = Configuration()
    configuration.refresh_api_key_hook = loader_hook
    client._throttle_token_refresh(configuration, 0.3)
    for _ in range(50):
        configuration.refresh_api_key_hook(configuration)
    assert len(runs) == 1
    time.sleep(0.35)
    for _ in range(50):
        configuration.refresh_api_key_hook(configuration)
    assert len(runs) == 2
    assert client.TOKEN_CHECK_SECONDS <= 1.0

    # the real client with a token kubeconfig: still throttled after many requests
    server = ScriptedAPI(lambda request: ok({"kind": "Secret", "metadata": {"name": "s"}}))
    try:
        kubeconfig = write_kubeconfig(
            tmp_path / "kubeconfig", {"c": f"http://127.0.0.1:{server.port}"}, "c",
            user={"token": CANARY},
        )  # fmt: skip
        api = kube.api_client(config.ClusterSettings(name="c", kubeconfig=str(kubeconfig)))
        for _ in range(5):
            kube.read_secret(api=api, namespace="t", name="s")
        installed = api.configuration.refresh_api_key_hook
        assert getattr(installed, "scanqueue_throttled", False)
        sent = {k.lower(): v for k, v in server.seen[-1].headers.items()}
        assert sent["authorization"] == f"Bearer {CANARY}"
    finally:
        server.stop()


def test_a_server_url_with_a_path_keeps_it_in_front_of_every_request(tmp_path: Path) -> None:
    """A kubeconfig server URL with a path (a proxy such as Rancher's /k8s/clusters/<id>):
    every request's path starts with it, as the client's own methods send it."""
    import kubernetes

    server = ScriptedAPI(lambda request: ok({"kind": "Secret", "metadata": {"name": "s"}}))
    try:
        kubeconfig = write_kubeconfig(
            tmp_path / "kubeconfig",
            {"prefixed": f"http://127.0.0.1:{server.port}/k8s/clusters/c-1/"},
            "prefixed",
        )
        api = kube.api_client(config.ClusterSettings(name="p", kubeconfig=str(kubeconfig)))
        kube.read_secret(api=api, namespace="t", name="s")
        ours = server.seen[-1]
        kubernetes.client.CoreV1Api(api).read_namespaced_secret("s", "t", _preload_content=False)
        theirs = server.seen[-1]
        assert ours.path == "/k8s/clusters/c-1/api/v1/namespaces/t/secrets/s"
        assert theirs.path.replace("//", "/") == ours.path
    finally:
        server.stop()
