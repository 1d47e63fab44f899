"""The farm over a TLS Redis (``rediss://``) with an ACL user, started by the test.

A private CA, a server certificate for 127.0.0.1 and a ``redis-server`` with
TLS only (no plain port) and the default user disabled: the dedupe client, the
watcher's publisher and a real worker process (broker and result backend) all
work with ``broker.ca_file``; without the CA the certificate is refused.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from scanqueue import config, dedupe, discovery, errors, processes, publish
from tests.support import services
from tests.support.worker_fixtures import WorkerProcess
from workers import app as worker_app

ACL_USER = "scanq"
ACL_PASSWORD = "tls-acl-pw-7d1f0c"


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _certificates(directory: Path) -> None:
    """ca.crt/ca.key, then server.crt/server.key for IP 127.0.0.1 signed by that CA."""
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-subj",
        "/CN=scanqueue test CA",
        cwd=directory,
    )
    _openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
        cwd=directory,
    )
    (directory / "ext.cnf").write_text("subjectAltName = IP:127.0.0.1\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
             "-CAcreateserial", "-days", "2", "-out", "server.crt", "-extfile", "ext.cnf",
             cwd=directory)  # fmt: skip
    (directory / "server.key").chmod(0o600)


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """(rediss:// URL with the ACL user, CA file) of a TLS-only redis-server."""
    directory = tmp_path / "redis-tls"
    directory.mkdir()
    _certificates(directory)
    port = services.free_port()
    argv = [
        "redis-server", "--bind", "127.0.0.1", "--port", "0", "--tls-port", str(port),
        "--tls-cert-file", "server.crt", "--tls-key-file", "server.key",
        "--tls-ca-cert-file", "ca.crt", "--tls-auth-clients", "no",
        "--save", "", "--appendonly", "no", "--dir", str(directory),
        "--user", "default", "off",
        "--user", ACL_USER, "on", f">{ACL_PASSWORD}", "~*", "&*", "+@all",
    ]  # fmt: skip
    process = processes.Process("redis-tls", argv, directory / "redis.out", cwd=directory)
    process.start()
    try:
        process.wait_port(port, timeout=20)
    except errors.ScanqueueError as e:
        process.stop(5)
        out = (directory / "redis.out").read_text(errors="replace")
        raise services.ServiceError(f"TLS redis-server did not start: {e}\n{out}") from None
    try:
        yield f"rediss://{ACL_USER}:{ACL_PASSWORD}@127.0.0.1:{port}/0", directory / "ca.crt"
    finally:
        process.stop(10)


def _settings(tmp_path: Path, url: str, ca_file: Path) -> Path:
    path = tmp_path / "scanqueue.toml"
    path.write_text(
        f'[broker]\nurl = "{url}"\nresult_backend = "{url}"\nca_file = "{ca_file}"\n'
        '[[clusters]]\nname = "alpha"\nkubeconfig = "/nonexistent"\n'
    )
    path.chmod(0o600)
    return path


def test_dedupe_and_publisher_speak_tls_with_an_acl_user(
    tmp_path: Path, tls_redis: tuple[str, Path]
) -> None:
    url, ca_file = tls_redis
    settings = config.load(_settings(tmp_path, url, ca_file), environ={})
    tls = config.redis_tls(settings.broker, settings.broker.url)
    conn = dedupe.client(url, tls=tls)
    try:
        (decision,) = dedupe.claim(conn, cluster="alpha", digests=["sha256:" + "e" * 64],
                                   ttl_seconds=60)  # fmt: skip
        assert decision.status == "claimed"
        request = discovery.ScanRequest(
            cluster="alpha", namespace="team-a", pod="web-1", node="n1",
            workload_kind="Deployment", workload_name="web", container="app",
            container_type="app", image="reg.example/team/web:1",
            digest="sha256:" + "e" * 64, pull_secrets=(), service_account="default",
            scan_id=decision.scan_id,
        )  # fmt: skip
        publisher = publish.Publisher(url, tls=tls)
        try:
            publisher.publish(request)
        finally:
            publisher.close()
        assert conn.llen("scan.alpha") == 1
    finally:
        conn.close()


def test_without_the_ca_the_servers_certificate_is_refused(tls_redis: tuple[str, Path]) -> None:
    url, _ = tls_redis
    conn = dedupe.client(url, tls=config.redis_tls(config.BrokerSettings(url=url), url))
    try:
        with pytest.raises(errors.TemporaryError, match="certificate verify failed") as caught:
            dedupe.is_fresh(conn, "sha256:" + "e" * 64)
        assert ACL_PASSWORD not in str(caught.value)
    finally:
        conn.close()


def test_a_worker_process_consumes_and_answers_over_tls(
    tmp_path: Path,
    tls_redis: tuple[str, Path],
    worker_factory: Callable[..., WorkerProcess],
) -> None:
    url, ca_file = tls_redis
    path = _settings(tmp_path, url, ca_file)
    worker = worker_factory(path, queues=[worker_app.CONTROL_QUEUE])
    client = worker_app.make_app(config.load(path, environ={}))
    result = client.send_task("scanqueue.ping", queue=worker_app.CONTROL_QUEUE)
    assert result.get(timeout=60) == "pong"
    assert ACL_PASSWORD not in worker.tail(400)
