"""API clients per cluster, sending a request, and decoding an answer.

The official client loads the kubeconfig or in-cluster configuration (auth, TLS, proxy)
and holds the connection pool; ``request`` sends through that pool itself, the way the
client's generated methods do, and answers are decoded as JSON: no model objects, which is
much faster and keeps the camelCase shape the rest of scanqueue expects (watches too,
line by line). What it must never do: keep global client state (``load_kube_config``).
"""

from __future__ import annotations

import time
import urllib.parse
import weakref
from collections.abc import Callable, Iterable
from typing import Any

import kubernetes
import orjson
import urllib3
from kubernetes.client.exceptions import ApiException

from scanqueue import config, errors
from scanqueue.kube import apierrors

ApiClient = kubernetes.client.ApiClient
Object = dict[str, Any]

LIST_PAGE_SIZE = 500  # objects per page of a paged list
CONNECT_TIMEOUT = 10.0  # seconds to open a connection to the API server
READ_TIMEOUT = 60.0  # seconds to wait for a (non-watch) response
WATCH_READ_MARGIN = 30.0  # a watch's read timeout exceeds its timeoutSeconds by this


def api_client(cluster: config.ClusterSettings) -> ApiClient:
    """Return a new API client for ``cluster`` (kubeconfig and context, or in-cluster).

    No global state is touched, so clients for several clusters live side by
    side. Raises ``ConfigError`` naming the cluster and the kubeconfig when
    the configuration cannot be loaded.
    """
    try:
        if cluster.in_cluster:
            configuration = kubernetes.client.Configuration()
            kubernetes.config.load_incluster_config(  # type: ignore[no-untyped-call]
                client_configuration=configuration
            )
        else:
            loaded: ApiClient = kubernetes.config.new_client_from_config(  # type: ignore[no-untyped-call]
                config_file=cluster.kubeconfig,
                context=cluster.context or None,
                persist_config=False,
            )
            configuration = loaded.configuration
            loaded.close()  # type: ignore[no-untyped-call]
    except (kubernetes.config.ConfigException, OSError, ValueError, TypeError) as e:
        source = "the in-cluster service account" if cluster.in_cluster else cluster.kubeconfig
        context = f", context {cluster.context!r}" if cluster.context else ""
        raise errors.ConfigError(
            f"cluster {cluster.name}: cannot load {source}{context}: {e}; "
            "fix the cluster's kubeconfig/context/in_cluster setting"
        ) from e
    # The pool is built from this when the client is: retry refused connections a little,
    # but never sleep on a Retry-After here; the caller's queue waits (TemporaryError.delay).
    configuration.retries = urllib3.util.Retry(
        total=2, connect=2, read=0, status=0, redirect=0, respect_retry_after_header=False
    )
    if configuration.refresh_api_key_hook is not None:
        _throttle_token_refresh(configuration, TOKEN_CHECK_SECONDS)
    return ApiClient(configuration)


TOKEN_CHECK_SECONDS = 1.0  # how often a request may run the configuration's token refresh


def _throttle_token_refresh(configuration: Any, seconds: float) -> None:
    """Run ``configuration``'s ``refresh_api_key_hook`` at most once per ``seconds``.

    The client runs the hook before every request. The kubeconfig loader's hook applies the
    whole configuration again each time (reading the environment's proxy variables: a tenth
    of a worker's CPU in API calls), though it gets a new token only when the old one is
    within five minutes of expiring; in-cluster, the hook re-reads the service account's
    token once a minute. Checked once a second, a token is renewed as early as before to
    within that second. The loaders' hooks install themselves again each time they run:
    the throttle is put back in front of whichever hook is there then.
    """
    hook = [configuration.refresh_api_key_hook]
    checked = [-seconds]

    def throttled(target: Any) -> None:
        now = time.monotonic()
        if now - checked[0] < seconds:
            return
        checked[0] = now
        hook[0](target)
        installed = target.refresh_api_key_hook
        if installed is not throttled:
            hook[0] = installed
            target.refresh_api_key_hook = throttled

    throttled.scanqueue_throttled = True  # type: ignore[attr-defined]  # what tests look for
    configuration.refresh_api_key_hook = throttled


JSON = "application/json"
_TIMEOUT = urllib3.Timeout(connect=CONNECT_TIMEOUT, read=READ_TIMEOUT)


def _timeout(read: float) -> urllib3.Timeout:
    return urllib3.Timeout(connect=CONNECT_TIMEOUT, read=read)


def path(*segments: str) -> str:
    """An API path from its segments, each escaped as the client escapes path parameters:
    ``path("api", "v1", "namespaces", ns, "secrets", name)``."""
    return "/" + "/".join(urllib.parse.quote(segment, safe="") for segment in segments)


def request(
    api: ApiClient,
    method: str,
    resource_path: str,
    *,
    query: Iterable[tuple[str, str]] = (),
    body: Object | None = None,
    content_type: str = JSON,
    read_timeout: float = READ_TIMEOUT,
) -> Any:
    """Send one API request as the client's generated methods send it, and return the raw
    answer unread, as they do with ``_preload_content=False`` (read ``.data``, then
    ``.release_conn()``; ``call`` does).

    The same request: the client's default headers and bearer token (refreshed by its own
    hook), its connection pool (TLS, proxy, retries) and timeouts, the body as JSON; a
    non-2xx answer raises the client's ``ApiException`` for it, as the methods do. Without
    their per-call work: pydantic validation of every argument and several layers of
    serialization cost about as much CPU as the HTTP exchange itself, and a scan makes
    eight such calls (bench/README, "pipeline"); and none of the client's API classes is
    imported (``CoreV1Api`` is a module of some 30,000 lines). ``resource_path`` from
    ``path``; ``read_timeout``: seconds to wait for the next bytes (a watch's is longer).
    """
    headers = {**api.default_headers, "Accept": JSON}
    if body is not None:
        headers["Content-Type"] = content_type
    queries = list(query)
    api.update_params_for_auth(headers, queries, ["BearerToken"], resource_path, method, body)
    target = resource_path + ("?" + urllib.parse.urlencode(queries) if queries else "")
    options: dict[str, Any] = {
        "body": None if body is None else orjson.dumps(body),
        "headers": headers,
        "timeout": _TIMEOUT if read_timeout == READ_TIMEOUT else _timeout(read_timeout),
        "preload_content": False,
    }
    direct = _server_pool(api)
    if direct is None:
        url = api.configuration.host + target
        response = api.rest_client.pool_manager.request(method, url, **options)
    else:
        pool, prefix = direct
        response = pool.urlopen(method, prefix + target, redirect=False, **options)
    if not 200 <= response.status <= 299:
        answer = kubernetes.client.rest.RESTResponse(response)
        try:
            answer.read()  # type: ignore[no-untyped-call]
        finally:
            response.release_conn()
        raise ApiException.from_response(http_resp=answer, body=None, data=None)
    return response


_SERVER_POOLS: weakref.WeakKeyDictionary[ApiClient, tuple[Any, str] | None] = (
    weakref.WeakKeyDictionary()
)


def _server_pool(api: ApiClient) -> tuple[Any, str] | None:
    """The API server's connection pool in ``api``'s pool manager and the path its URL
    starts with ("" or a prefix such as /k8s/clusters/c-1), or None when requests go through
    a proxy (the proxy manager then places each one).

    Requests go to that pool directly: the pool manager parses the URL and looks its pool
    up again for every request (a fifth of the client's CPU for a small answer). The same
    pool, connections, TLS settings and retries.
    """
    if api not in _SERVER_POOLS:
        manager = api.rest_client.pool_manager
        found: tuple[Any, str] | None = None
        if type(manager) is urllib3.PoolManager:
            url = urllib3.util.parse_url(api.configuration.host)
            found = (manager.connection_from_url(str(url)), (url.path or "").rstrip("/"))
        _SERVER_POOLS[api] = found
    return _SERVER_POOLS[api]


def call(
    verb: str, kind: str, namespace: str | None, name: str | None, call: Callable[[], Any]
) -> Object:
    """Run ``call`` (a ``request``); return the decoded body."""

    def run() -> Object:
        response = call()
        try:
            data = response.data
        finally:
            response.release_conn()
        decoded = orjson.loads(data) if data else {}
        if not isinstance(decoded, dict):
            raise ValueError("response is not a JSON object")
        return decoded

    try:
        return apierrors.translate(verb, kind, namespace, name, run)
    except ValueError as e:
        raise errors.TemporaryError(
            f"{verb} {kind} {apierrors.location(namespace, name)}: the API server's answer "
            f"is not JSON ({e}); retry"
        ) from None  # the decode error keeps the raw body (a Secret's, say): not chained
