"""The emulator's HTTP face: kube-apiserver's URL layout, verbs, Status errors and watch streams.

Standard library only (``http.server``): one thread per connection, HTTP/1.1
keep-alive, chunked streaming for watches. Each request is counted by
(verb, resource) and may be failed on purpose by the fault injector before
it reaches the ``Cluster``. It never logs request bodies: secrets pass
through here.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import select
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson

from scanqueue.sim import apierrors, bodies, counts, faults, resources, selectors
from scanqueue.sim import cluster as cluster_mod
from scanqueue.sim import options as options_mod

log = logging.getLogger(__name__)
JOB_ORPHAN_WARNING = (
    '299 - "child pods are preserved by default when jobs are deleted; set '
    "propagationPolicy=Background to remove them or set propagationPolicy=Orphan to suppress "
    'this warning"'
)


def version_info(kube_version: str) -> dict[str, Any]:
    """What ``GET /version`` answers for ``kube_version`` ("1.30")."""
    major, minor = kube_version.split(".")[:2]
    return {
        "major": major,
        "minor": minor,
        "gitVersion": f"v{major}.{minor}.0-scanqueue-sim",
        "gitCommit": "0" * 40,
        "gitTreeState": "clean",
        "buildDate": "2024-01-01T00:00:00Z",
        "goVersion": "go1.22.0",
        "compiler": "gc",
        "platform": "linux/amd64",
    }


def _event_line(kind: str, obj: Any) -> bytes:
    """One watch event as the stream carries it: a JSON object and a newline."""
    return orjson.dumps({"type": kind, "object": obj}) + b"\n"


def _event_lines(
    events: list[cluster_mod.Event], res: resources.Resource, matches: Callable[[Any], bool]
) -> list[bytes]:
    """The lines a watch of ``res`` through ``matches`` sends for ``events``: an object that
    starts or stops matching is ADDED or DELETED for this watch, as kube-apiserver says."""
    out = []
    for event in events:
        if event.resource != res.key:
            continue
        now_match = matches(event.obj)
        was_match = event.old is not None and matches(event.old)
        kind = event.type
        if kind == "MODIFIED" and now_match != was_match:
            kind = "ADDED" if now_match else "DELETED"
        elif not now_match:
            continue
        out.append(_event_line(kind, bodies.typed(res, event.obj)))
    return out


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self,
        address: tuple[str, int],
        *,
        cluster: cluster_mod.Cluster,
        faults: faults.Faults,
        counts: counts.RequestCounts,
        options: options_mod.EmulatorOptions,
        stopping: threading.Event,
    ) -> None:
        self.cluster = cluster
        self.faults = faults
        self.counts = counts
        self.options = options
        self.stopping = stopping  # set by the emulator's stop(): open watches end
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__(address, Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.connections_lock:
            self.connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self.connections_lock:
            self.connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        with self.connections_lock:
            connections = list(self.connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


_HANG_UP_CHECK = 0.5  # seconds between hang-up checks of a watch that keeps getting changes
_MAX_LINE = 65536  # http.client's limits on a header line and on the number of headers
_MAX_HEADERS = 100
_date: list[Any] = [0, ""]  # (second, Date header text) of the last response


class _Headers:
    """A request's header fields by lowercase name: what the handler reads of them."""

    __slots__ = ("_fields",)

    def __init__(self, fields: dict[str, str]) -> None:
        self._fields = fields

    def get(self, name: str, default: str | None = None) -> str | None:
        return self._fields.get(name.lower(), default)

    def __getitem__(self, name: str) -> str | None:
        return self._fields.get(name.lower())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._fields


@functools.lru_cache(maxsize=16)
def _utf8(text: str) -> bytes:
    """A log as sent: encoded once per text (the recorded report every scan pod prints is
    one object; a text's hash is kept by the string, and a lookup compares identity first)."""
    return text.encode()


def _flag(query: dict[str, str], name: str) -> bool:
    return query.get(name, "").lower() in ("true", "1")


ONE_WRITE_BYTES = 65536  # answers up to this size go out with their headers in one write


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes: with Nagle's algorithm on, the body waits
    # for the client's delayed ACK of the headers (40 ms on Linux) on every request.
    disable_nagle_algorithm = True
    server: Server

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: request lines may name secrets; counts are in ``request_counts``."""

    def parse_request(self) -> bool:
        """``BaseHTTPRequestHandler.parse_request`` for what clients send here: an HTTP/1.1
        request line and plain header lines, kept in a case-insensitive ``_Headers``.

        The standard library builds an ``email`` message of the headers (~0.1 ms a request,
        a tenth of the emulator's CPU in a burst of scans, on the farm's cores). Anything
        else (another HTTP version, a malformed line) goes to the standard parsing, which
        answers it as it always did; so do header lines too long or too many (431).
        """
        line: bytes = self.raw_requestline  # type: ignore[attr-defined]  # set by handle_one_request
        words = line.decode("iso-8859-1").rstrip("\r\n").split()
        if len(words) != 3 or words[2] != "HTTP/1.1" or words[1].startswith("//"):
            return bool(super().parse_request())
        self.command, self.path, self.request_version = words
        self.requestline = " ".join(words)
        fields: dict[str, str] = {}
        for _ in range(_MAX_HEADERS + 1):
            raw = self.rfile.readline(_MAX_LINE + 1)
            if len(raw) > _MAX_LINE:
                self.send_error(431, "Line too long")
                return False
            if raw in (b"\r\n", b"\n", b""):
                break
            name, colon, value = raw.decode("iso-8859-1").partition(":")
            if not colon or not name or name != name.strip():
                self.close_connection = True
                self.send_error(400, "Bad header line")
                return False
            fields[name.lower()] = value.strip()
        else:
            self.send_error(431, "Too many headers")
            return False
        self.headers = _Headers(fields)  # type: ignore[assignment]
        self.close_connection = fields.get("connection", "").lower() == "close"
        if fields.get("expect", "").lower() == "100-continue":
            return bool(self.handle_expect_100())
        return True

    def date_time_string(self, timestamp: float | None = None) -> str:
        """The Date header, formatted once per second (not once per response)."""
        if timestamp is not None:
            return str(super().date_time_string(timestamp))
        now = int(time.time())
        second, text = _date
        if second != now:
            text = str(super().date_time_string(now))
            _date[:] = [now, text]
        return str(text)

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_PUT(self) -> None:
        self._handle("PUT")

    def do_PATCH(self) -> None:
        self._handle("PATCH")

    def do_DELETE(self) -> None:
        self._handle("DELETE")

    # ------------------------------------------------------------ responses

    def _send(
        self,
        code: int,
        body: Any,
        *,
        content_type: str = "application/json",
        headers: dict[str, str] | None = None,
    ) -> None:
        # orjson: compact JSON as kube-apiserver writes it (UTF-8, not \u-escaped), in a tenth
        # of the standard library's time (the emulator shares the farm's cores)
        data = body if isinstance(body, bytes) else orjson.dumps(body)
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-cache, private")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if self.command == "HEAD":
            self.end_headers()
        elif len(data) <= ONE_WRITE_BYTES:
            # headers and body in one write (``end_headers`` without its flush): a syscall
            # less here and a wake-up less in the client, for each of the ~8 requests a scan
            # costs (the emulator shares the farm's cores)
            buffered: list[bytes] = self._headers_buffer  # type: ignore[attr-defined]
            buffered += (b"\r\n", data)
            self.flush_headers()
        else:
            self.end_headers()
            self.wfile.write(data)

    def _error(self, error: apierrors.ApiError) -> None:
        headers = {}
        if error.retry_after is not None:
            headers["Retry-After"] = str(int(error.retry_after))
        self._send(error.code, error.status(), headers=headers)

    def _body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if not raw:
            return None
        try:
            return json.loads(raw)
        except ValueError as e:
            raise apierrors.bad_request(f"couldn't get version/kind; json parse error: {e}") from e

    # -------------------------------------------------------------- routing

    def _handle(self, method: str) -> None:
        server = self.server
        url = urllib.parse.urlsplit(self.path)
        query = {k: v[-1] for k, v in urllib.parse.parse_qs(url.query).items()}
        parts = [urllib.parse.unquote(p) for p in url.path.strip("/").split("/") if p]
        try:
            body = self._body() if method in ("POST", "PUT", "PATCH", "DELETE") else None
            if self._discovery(method, parts):
                return
            route = self._route(parts)
            if route is None:
                raise apierrors.ApiError(
                    404, "NotFound", "the server could not find the requested resource"
                )
            res, namespace, name, sub = route
            verb = self._verb(method, name, query)
            counted = res.plural if sub is None else f"{res.plural}/{sub}"
            server.counts.count(verb, counted)
            server.faults.check(verb, counted)
            if verb == "watch":
                self._watch(res, namespace, query)
                return
            self._dispatch(
                verb=verb, res=res, namespace=namespace, name=name, sub=sub, query=query, body=body
            )
        except apierrors.ApiError as e:
            self._error(e)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as e:  # an emulator bug: answer like a server would, and say so
            log.exception("emulator error on %s %s", method, url.path)
            with contextlib.suppress(OSError):
                self._error(
                    apierrors.ApiError(500, "InternalError", f"emulator error: {type(e).__name__}")
                )

    def _discovery(self, method: str, parts: list[str]) -> bool:
        if method != "GET":
            return False
        doc: Any = None
        if parts in (["healthz"], ["readyz"], ["livez"]):
            self._send(200, b"ok", content_type="text/plain")
            return True
        if parts == ["version"]:
            doc = version_info(self.server.options.kube_version)
        elif parts == ["api"]:
            doc = resources.api_versions()
        elif parts == ["api", "v1"]:
            doc = resources.resource_list("", "v1")
        elif parts == ["apis"]:
            doc = resources.api_group_list()
        elif len(parts) == 2 and parts[0] == "apis":
            doc = resources.api_group(parts[1])
        elif len(parts) == 3 and parts[0] == "apis":
            doc = resources.resource_list(parts[1], parts[2])
        else:
            return False
        if doc is None:
            raise apierrors.ApiError(
                404, "NotFound", "the server could not find the requested resource"
            )
        self._send(200, doc)
        return True

    def _route(
        self, parts: list[str]
    ) -> tuple[resources.Resource, str | None, str | None, str | None] | None:
        if parts[:2] == ["api", "v1"]:
            group, version, rest = "", "v1", parts[2:]
        elif len(parts) >= 3 and parts[0] == "apis":
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            return None
        namespace: str | None = None
        if len(rest) >= 3 and rest[0] == "namespaces" and rest[2] != "status":
            namespace, rest = rest[1], rest[2:]
        if not rest or len(rest) > 3:
            return None
        res = resources.by_path(group, version, rest[0])
        if res is None:
            return None
        if namespace is not None and not res.namespaced:
            return None
        name = rest[1] if len(rest) > 1 else None
        sub = rest[2] if len(rest) > 2 else None
        if sub is not None and sub not in res.subresources:
            return None
        if res.namespaced and name is not None and namespace is None:
            return None
        return res, namespace, name, sub

    @staticmethod
    def _verb(method: str, name: str | None, query: dict[str, str]) -> str:
        if method == "GET":
            if name is not None:
                return "get"
            return "watch" if _flag(query, "watch") else "list"
        if method == "POST":
            if name is not None:
                raise apierrors.ApiError(
                    405,
                    "MethodNotAllowed",
                    "the server does not allow this method on the requested resource",
                )
            return "create"
        if name is None:
            if method == "DELETE":
                return "deletecollection"
            raise apierrors.ApiError(
                405,
                "MethodNotAllowed",
                "the server does not allow this method on the requested resource",
            )
        return {"PUT": "update", "PATCH": "patch", "DELETE": "delete"}[method]

    def _dispatch(
        self,
        *,
        verb: str,
        res: resources.Resource,
        namespace: str | None,
        name: str | None,
        sub: str | None,
        query: dict[str, str],
        body: Any,
    ) -> None:
        cluster = self.server.cluster
        dry_run = query.get("dryRun") == "All"
        if "dryRun" in query and not dry_run:
            raise apierrors.bad_request(
                f'unsupported dry run value "{query["dryRun"]}"; expected "All"'
            )
        ns = namespace or ""
        warnings: list[str] = []
        # the emulator's default is Strict (a real server's is Warn): typos fail tests
        field_validation = query.get("fieldValidation") or "Strict"
        if field_validation not in bodies.FIELD_VALIDATION:
            raise apierrors.bad_request(
                f"fieldValidation must be one of {', '.join(bodies.FIELD_VALIDATION)}, "
                f"not {field_validation!r}"
            )
        writing: dict[str, Any] = {"field_validation": field_validation, "warnings": warnings}
        if verb == "list":
            self._list(res, namespace, query)
        elif verb == "get" and sub == "log":
            assert name is not None
            self._log(namespace or "", name, query)
        elif verb == "get":
            assert name is not None
            self._send(200, bodies.typed(res, cluster.get(res, ns, name)))
        elif verb == "create":
            # the body came from json.loads for this request alone: no copy needed
            obj = cluster.create(res, ns, body, dry_run=dry_run, owned=True, **writing)
            self._send(201, bodies.typed(res, obj), headers=self._warnings(warnings))
        elif verb == "update":
            assert name is not None
            obj = cluster.replace(res, ns, name, body, subresource=sub, dry_run=dry_run, **writing)
            self._send(200, bodies.typed(res, obj), headers=self._warnings(warnings))
        elif verb == "patch":
            assert name is not None
            content_type = self.headers.get("Content-Type", "")
            if "apply-patch" in content_type:
                raise apierrors.ApiError(
                    415, "UnsupportedMediaType", f"the emulator does not implement {content_type}"
                )
            obj = cluster.patch(
                res, ns, name, body, content_type, subresource=sub, dry_run=dry_run, **writing
            )
            self._send(200, bodies.typed(res, obj), headers=self._warnings(warnings))
        elif verb == "delete":
            assert name is not None
            self._delete(res=res, namespace=ns, name=name, query=query, body=body, dry_run=dry_run)
        elif verb == "deletecollection":
            options = body if isinstance(body, dict) else {}
            cluster.delete_collection(
                res,
                namespace,
                label_selector=query.get("labelSelector"),
                field_selector=query.get("fieldSelector"),
                propagation=query.get("propagationPolicy") or options.get("propagationPolicy"),
                dry_run=dry_run,
            )
            self._send(
                200, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"}
            )

    @staticmethod
    def _warnings(warnings: list[str]) -> dict[str, str]:
        if not warnings:
            return {}
        return {"Warning": ", ".join(f'299 - "{w.replace(chr(34), chr(39))}"' for w in warnings)}

    def _list(self, res: resources.Resource, namespace: str | None, query: dict[str, str]) -> None:
        limit = int(query["limit"]) if query.get("limit", "").isdigit() else None
        found = self.server.cluster.list(
            res,
            namespace,
            label_selector=query.get("labelSelector"),
            field_selector=query.get("fieldSelector"),
            limit=limit or None,
            cont=query.get("continue") or None,
        )
        meta: dict[str, Any] = {"resourceVersion": str(found.resource_version)}
        if found.cont:
            meta["continue"] = found.cont
            meta["remainingItemCount"] = found.remaining
        self._send(
            200,
            {
                "kind": res.list_kind,
                "apiVersion": res.api_version,
                "metadata": meta,
                "items": found.items,
            },
        )

    def _delete(
        self,
        *,
        res: resources.Resource,
        namespace: str,
        name: str,
        query: dict[str, str],
        body: Any,
        dry_run: bool,
    ) -> None:
        options = body if isinstance(body, dict) else {}
        propagation = query.get("propagationPolicy") or options.get("propagationPolicy")
        orphan = query.get("orphanDependents") or options.get("orphanDependents")
        if propagation is None and orphan is not None:
            propagation = "Orphan" if str(orphan).lower() == "true" else "Background"
        if options.get("dryRun") == ["All"]:
            dry_run = True
        obj, gone = self.server.cluster.delete(
            res,
            namespace,
            name,
            propagation=propagation,
            preconditions=options.get("preconditions"),
            dry_run=dry_run,
        )
        headers = (
            {"Warning": JOB_ORPHAN_WARNING} if res.default_orphan and propagation is None else {}
        )
        if gone and res.plural != "pods":
            status: dict[str, Any] = {
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Success",
                "details": {"name": name, "kind": res.plural, "uid": obj["metadata"]["uid"]},
            }
            if res.group:
                status["details"]["group"] = res.group
            self._send(200, status, headers=headers)
        else:
            # kube-apiserver answers 202 only to a deferred delete with orphanDependents=false
            accepted = not gone and orphan is not None and str(orphan).lower() == "false"
            self._send(202 if accepted else 200, bodies.typed(res, obj), headers=headers)

    # ------------------------------------------------------------------ log

    def _log(self, namespace: str, name: str, query: dict[str, str]) -> None:
        cluster = self.server.cluster
        pod = cluster.get(resources.BY_KEY["pods"], namespace, name)
        spec = pod.get("spec") or {}
        names = [c["name"] for c in spec.get("containers") or []]
        init_names = [c["name"] for c in spec.get("initContainers") or []]
        container = query.get("container")
        if not container:
            if len(names) != 1:
                raise apierrors.bad_request(
                    f"a container name must be specified for pod {name}, choose one of: "
                    f"[{' '.join(names)}] or one of the init containers: [{' '.join(init_names)}]"
                )
            container = names[0]
        if container not in names and container not in init_names:
            raise apierrors.bad_request(f"container {container} is not valid for pod {name}")
        status = pod.get("status") or {}
        statuses = (status.get("containerStatuses") or []) + (
            status.get("initContainerStatuses") or []
        )
        state = next((s.get("state") or {} for s in statuses if s.get("name") == container), {})
        if "running" not in state and "terminated" not in state:
            reason = (state.get("waiting") or {}).get("reason", "ContainerCreating")
            raise apierrors.bad_request(
                f'container "{container}" in pod "{name}" is waiting to start: {reason}'
            )
        text = cluster.logs.get(pod["metadata"]["uid"], {}).get(container, "")
        if query.get("tailLines", "").isdigit():
            lines = text.splitlines(keepends=True)
            text = "".join(lines[-int(query["tailLines"]) :]) if int(query["tailLines"]) else ""
        data = _utf8(text)
        if query.get("limitBytes", "").isdigit():
            data = data[: int(query["limitBytes"])]
        self._send(200, data, content_type="text/plain")

    # ---------------------------------------------------------------- watch

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _watch(self, res: resources.Resource, namespace: str | None, query: dict[str, str]) -> None:
        server = self.server
        cluster = server.cluster
        labels, fields, timeout, rv_text = self._watch_query(res, query)
        bookmarks = _flag(query, "allowWatchBookmarks")
        generation = server.faults.watch_generation

        def matches(obj: cluster_mod.Obj) -> bool:
            if namespace is not None and obj["metadata"].get("namespace") != namespace:
                return False
            return selectors.labels_match(labels, obj) and (fields is None or fields(obj))

        def relevant(event: cluster_mod.Event) -> bool:
            # what _event_lines sends something for: the object matches now or matched before
            return matches(event.obj) or (event.old is not None and matches(event.old))

        encode = _event_line  # the hot loop below reads a local
        self._start_chunked()
        deadline = time.monotonic() + timeout
        forced_gone = server.faults.take_gone(res.plural)
        initial, cursor, expired = self._watch_start(res, namespace, rv_text, matches)
        with cluster.watching(res, relevant) as changed:
            try:
                if forced_gone or expired:
                    self._send_expired(f"{rv_text} ({cluster.oldest_resumable + 1})")
                    self._chunk(b"")
                    return
                batch = b"".join(encode("ADDED", bodies.typed(res, o)) for o in initial)
                if batch:
                    self._chunk(batch)
                last_bookmark = next_check = time.monotonic()
                while True:
                    events = self._next_events(
                        changed,
                        cursor,
                        deadline=deadline,
                        generation=generation,
                        bookmark_due=last_bookmark + server.options.bookmark_interval
                        if bookmarks
                        else None,
                    )
                    # whether the client left: asked when idle, and at most every half second
                    # while changes keep coming (a select per change was a syscall per wake-up;
                    # a write to a client that left fails in turn)
                    if not events or time.monotonic() >= next_check:
                        if self._client_gone():
                            self.close_connection = True
                            return  # the client hung up: free this thread now, not at the timeout
                        next_check = time.monotonic() + _HANG_UP_CHECK
                    if server.faults.watch_generation != generation:
                        # a dropped connection: no terminating chunk, the socket just closes
                        self.close_connection = True
                        with contextlib.suppress(OSError):
                            self.connection.shutdown(socket.SHUT_RDWR)
                        return
                    if events is None:
                        self._send_expired(str(cursor))
                        break
                    out = _event_lines(events, res, matches)
                    if events:
                        cursor = events[-1].rv
                    if out:
                        self._chunk(b"".join(out))
                    now = time.monotonic()
                    if bookmarks and now - last_bookmark >= server.options.bookmark_interval:
                        self._chunk(encode("BOOKMARK", self._bookmark(res, cursor)))
                        last_bookmark = now
                    if now >= deadline or server.stopping.is_set():
                        break
                if bookmarks:
                    self._chunk(encode("BOOKMARK", self._bookmark(res, cursor)))
                self._chunk(b"")
            except (BrokenPipeError, ConnectionResetError, OSError):
                self.close_connection = True

    def _watch_query(
        self, res: resources.Resource, query: dict[str, str]
    ) -> tuple[Any, Any, float, str]:
        """A watch's label and field selectors, timeout and resourceVersion; 400 for bad ones."""
        try:
            labels = selectors.parse_labels(query.get("labelSelector"))
            fields = selectors.parse_fields(query.get("fieldSelector"), res.fields)
        except selectors.SelectorError as e:
            raise apierrors.bad_request(str(e)) from e
        try:
            timeout = float(query.get("timeoutSeconds") or self.server.options.watch_timeout)
        except ValueError as e:
            raise apierrors.bad_request(f"invalid timeoutSeconds: {e}") from e
        rv_text = query.get("resourceVersion") or ""
        if rv_text and not rv_text.isdigit():
            raise apierrors.bad_request(f'invalid resource version "{rv_text}"')
        return labels, fields, timeout, rv_text

    def _watch_start(
        self,
        res: resources.Resource,
        namespace: str | None,
        rv_text: str,
        matches: Callable[[Any], bool],
    ) -> tuple[list[cluster_mod.Obj], int, bool]:
        """Where a watch starts: the objects to send as ADDED first (a watch from "" or "0"),
        the resourceVersion to follow from, and whether ``rv_text`` is too old to resume."""
        cluster = self.server.cluster
        with cluster.lock:
            if not rv_text or rv_text == "0":
                initial = [o for o in cluster.objects(res, namespace) if matches(o)]
                initial.sort(
                    key=lambda o: (o["metadata"].get("namespace", ""), o["metadata"]["name"])
                )
                return initial, cluster.resource_version, False
            cursor = int(rv_text)
            return [], cursor, cluster.events_since(cursor) is None

    def _send_expired(self, version: str) -> None:
        """The 410 Expired ERROR event of a watch that cannot resume from ``version``."""
        status = apierrors.ApiError(410, "Expired", f"too old resource version: {version}")
        self._chunk(_event_line("ERROR", status.status()))

    def _next_events(
        self,
        changed: threading.Condition,
        cursor: int,
        *,
        deadline: float,
        generation: int,
        bookmark_due: float | None,
    ) -> list[cluster_mod.Event] | None:
        """The events after ``cursor``, waiting on ``changed`` (notified by a change this watch
        may send) until the deadline, a dropped connection (a new fault generation), a
        bookmark falls due or the client leaves. None: ``cursor`` is older than the retained
        window. The events may include changes the watch does not send."""
        server = self.server
        cluster = server.cluster
        with cluster.lock:
            events = cluster.events_since(cursor)
            while events is not None and not events and not server.stopping.is_set():
                left = deadline - time.monotonic()
                if left <= 0 or server.faults.watch_generation != generation:
                    break
                changed.wait(min(left, server.options.bookmark_interval, 0.5))
                events = cluster.events_since(cursor)
                if events:
                    break  # the caller sends them; it asks whether the client left otherwise
                if (
                    bookmark_due is not None and time.monotonic() >= bookmark_due
                ) or self._client_gone():
                    break
        return events

    def _start_chunked(self) -> None:
        """The 200 and headers of a watch: a chunked JSON stream, never cached."""
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Cache-Control", "no-cache, private")
        self.end_headers()

    def _client_gone(self) -> bool:
        """Whether the client closed its end (readable with nothing to read)."""
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    @staticmethod
    def _bookmark(res: resources.Resource, rv: int) -> dict[str, Any]:
        return {
            "kind": res.kind,
            "apiVersion": res.api_version,
            "metadata": {"resourceVersion": str(rv)},
        }
