"""A capturing webhook receiver on loopback, and small Trivy reports for the alert tests.

The receiver records every request (path, headers, body) and answers as its
``behaviour`` says: ``ok`` (200), ``fail`` (500), ``slow`` (answers after
``delay`` seconds), ``redirect`` (302 to another path). A receiver that is
down is one not started yet, on a port reserved for it.
"""

from __future__ import annotations

import dataclasses
import http.server
import json
import threading
import time
from typing import Any

from scanqueue import reports


@dataclasses.dataclass(frozen=True)
class Request:
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class Receiver:
    def __init__(self, port: int = 0, *, behaviour: str = "ok", delay: float = 3.0) -> None:
        self.behaviour = behaviour
        self.delay = delay
        self.requests: list[Request] = []
        self._port = port
        self._server: http.server.ThreadingHTTPServer | None = None

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.server_address[1])

    def start(self) -> Receiver:
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                receiver.requests.append(Request(self.path, dict(self.headers), body))
                if receiver.behaviour == "slow":
                    time.sleep(receiver.delay)
                status = {"ok": 200, "fail": 500, "slow": 200, "redirect": 302}[receiver.behaviour]
                self.send_response(status)
                if status == 302:
                    self.send_header("Location", f"http://127.0.0.1:{receiver.port}/elsewhere")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", self._port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def vuln(
    cve: str, pkg: str, severity: str, installed: str, fixed: str, title: str = ""
) -> dict[str, Any]:
    return {
        "VulnerabilityID": cve,
        "PkgName": pkg,
        "InstalledVersion": installed,
        "FixedVersion": fixed,
        "Status": "fixed" if fixed else "affected",
        "Severity": severity,
        "Title": title or f"{pkg}: {cve}",
        "PrimaryURL": f"https://avd.aquasec.com/nvd/{cve.lower()}",
    }


def report(artifact: str, vulnerabilities: list[dict[str, Any]]) -> reports.Report:
    """A schema-2 Trivy report of one alpine target holding ``vulnerabilities``."""
    doc = {
        "SchemaVersion": 2,
        "CreatedAt": "2026-12-01T10:00:00Z",
        "ArtifactName": artifact,
        "ArtifactType": "container_image",
        "Metadata": {"OS": {"Family": "alpine", "Name": "3.19.4"}},
        "Results": [
            {
                "Target": f"{artifact} (alpine 3.19.4)",
                "Class": "os-pkgs",
                "Type": "alpine",
                "Vulnerabilities": vulnerabilities,
            }
        ],
    }
    return reports.parse(json.dumps(doc))
