"""HTTP for the registry client: one urllib3 pool, bounded retries, and redirects under our control.

Every rule about where a credential may go is enforced here, on the
``urls.Target`` the connection uses, never on a string parsed a second time:

- ``Authorization`` is attached only when the target's origin (scheme, host,
  port, as ``urls.parse`` read it) equals the credential's origin;
- a request body (it holds a refresh token) is sent only to that origin, so a
  307/308 to another origin ends the attempt instead of forwarding it;
- plain ``http://`` only to loopback or a host listed in
  ``scan.insecure_registries``, checked again on every redirect hop;
- a ``Location`` that parsers could read differently is refused, not followed;
- the socket goes to exactly the decided host and port
  (``connection_from_host``), and only the decided path is sent.

This module must never follow a redirect through urllib3 (``redirect=False``
always), skip TLS verification, or put a credential or a URL's query in a
log line or message. It is, with ``scanqueue.kube``, the only module that
imports ``urllib3`` to connect (an import-linter contract says so).
"""

from __future__ import annotations

import email.utils
import logging
import ssl
import time
from collections.abc import Callable, Mapping

import urllib3

import scanqueue
from scanqueue import config, credentials
from scanqueue.registry import answers, urls

logger = logging.getLogger("scanqueue.registry")

MAX_REDIRECTS = 5
MAX_BODY_BYTES = 4 * 1024 * 1024  # distribution refuses larger manifests too
USER_AGENT = f"scanqueue/{scanqueue.__version__}"
_RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})


def target(url: str, *, what: str) -> urls.Target:
    """``urls.parse(url)``, or an ``AttemptError`` naming ``what`` the URL was."""
    try:
        return urls.parse(url)
    except urls.UnsafeURLError as e:
        raise answers.AttemptError("error", f"refusing the {what} URL: {e}") from None


class Transport:
    """Sends requests for one ``Client``; thread-safe (urllib3's pool is)."""

    def __init__(
        self,
        *,
        settings: config.ScanSettings,
        max_attempts: int,
        max_retry_wait: float,
        sleep: Callable[[float], None] = time.sleep,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._max_attempts = max_attempts
        self._max_retry_wait = max_retry_wait
        self._sleep = sleep
        self._wall_clock = wall_clock
        self.insecure = frozenset(h.lower() for h in settings.insecure_registries)
        timeout = settings.registry_timeout_seconds
        self._http = urllib3.PoolManager(
            num_pools=20,
            maxsize=4,
            retries=False,
            timeout=urllib3.Timeout(connect=timeout, read=timeout),
            cert_reqs=ssl.CERT_REQUIRED,
            ca_certs=settings.registry_ca_bundle or None,
        )

    def clear(self) -> None:
        """Close pooled connections."""
        self._http.clear()

    def plain_http_allowed(self, origin: urls.Origin) -> bool:
        """True for loopback and for hosts listed in ``scan.insecure_registries``."""
        return (
            urls.is_loopback(origin.host)
            or origin.netloc in self.insecure
            or origin.host in self.insecure
        )

    def request(
        self,
        method: str,
        start: urls.Target,
        *,
        headers: Mapping[str, str],
        authorization: str | None,
        auth_origin: urls.Origin,
        credential: credentials.Credential | None,
        body: bytes | None = None,
    ) -> answers.Response:
        """One request with bounded retries; ``authorization`` and ``body`` go only to
        ``auth_origin``. Raises ``AttemptError`` (scrubbed of ``credential``'s secrets)."""
        for attempt in range(1, self._max_attempts + 1):
            try:
                response = self._follow(
                    method,
                    start,
                    headers=headers,
                    authorization=authorization,
                    auth_origin=auth_origin,
                    body=body,
                )
            except answers.AttemptError as failure:
                if failure.kind != "unreachable" or attempt == self._max_attempts:
                    failure.detail = answers.scrub(failure.detail, credential)
                    raise
                wait = 0.5 * 2 ** (attempt - 1)
                logger.debug("retrying %s %s in %.1fs: %s", method, start.loggable, wait, failure)
                self._sleep(wait)
                continue
            if response.status not in _RETRY_STATUSES:
                return response
            delay = retry_after(response.headers, self._wall_clock())
            detail = f"{response.origin.netloc} answered {response.status}"
            if delay is not None:
                detail += f" (Retry-After {delay:.0f}s)"
            if attempt == self._max_attempts or (
                delay is not None and delay > self._max_retry_wait
            ):
                raise answers.AttemptError(
                    "unreachable", detail, status=response.status, delay=delay
                )
            wait = delay if delay is not None else 0.5 * 2 ** (attempt - 1)
            logger.debug("retrying %s %s in %.1fs: %s", method, start.loggable, wait, detail)
            self._sleep(wait)
        raise AssertionError("unreachable")  # pragma: no cover

    def _follow(
        self,
        method: str,
        start: urls.Target,
        *,
        headers: Mapping[str, str],
        authorization: str | None,
        auth_origin: urls.Origin,
        body: bytes | None,
    ) -> answers.Response:
        """Send, following redirects by hand: credentials never leave ``auth_origin``."""
        current = start
        for _ in range(MAX_REDIRECTS + 1):
            origin = current.origin
            if origin.scheme == "http" and not self.plain_http_allowed(origin):
                raise answers.AttemptError(
                    "not-sent",
                    f"refusing plain http to {origin.netloc}: not loopback and not in "
                    "scan.insecure_registries",
                )
            if body is not None and origin != auth_origin:
                # the body holds a credential (the refresh-token grant): like
                # Authorization, it never leaves its origin
                raise answers.AttemptError(
                    "not-sent",
                    f"a token request to {auth_origin.netloc} was sent toward "
                    f"{origin.netloc}; its body holds a credential and is not sent to "
                    "another origin",
                )
            send = {"User-Agent": USER_AGENT, **headers}
            if authorization is not None and origin == auth_origin:
                send["Authorization"] = authorization
            response = self._send(method, current, send, body)
            if response.status not in _REDIRECT_STATUSES:
                return response
            try:
                following = urls.join(current, response.headers.get("location", ""))
            except urls.UnsafeURLError as e:
                raise answers.AttemptError(
                    "error",
                    f"{origin.netloc} answered {response.status} with a Location the client "
                    f"does not follow: {e}",
                    status=response.status,
                ) from None
            if response.status == 303 or (response.status in (301, 302) and method == "POST"):
                method, body = "GET", None
            if body is not None and following.origin != auth_origin:
                raise answers.AttemptError(
                    "not-sent",
                    f"{origin.netloc} redirected a token request to "
                    f"{following.origin.netloc}; its body holds a credential and is "
                    "not sent to another origin",
                )
            logger.debug("redirected to %s", following.loggable)
            current = following
        raise answers.AttemptError(
            "error", f"more than {MAX_REDIRECTS} redirects from {start.loggable}"
        )

    def _send(
        self, method: str, where: urls.Target, headers: Mapping[str, str], body: bytes | None
    ) -> answers.Response:
        """One exchange with exactly ``where``: its pool is chosen from the parsed origin
        and only its request path is sent, so nothing re-reads the URL."""
        origin = where.origin
        try:
            pool = self._http.connection_from_host(origin.host, origin.port, origin.scheme)
            raw = pool.urlopen(
                method,
                where.request_uri,
                headers=dict(headers),
                body=body,
                redirect=False,
                retries=False,
                assert_same_host=False,
                preload_content=False,
            )
        except urllib3.exceptions.SSLError as e:
            raise answers.AttemptError("tls", _tls_detail(origin, e)) from None
        except urllib3.exceptions.NewConnectionError as e:  # before its base class
            reason = _connection_reason(e)
            raise answers.AttemptError(
                "unreachable", f"cannot connect to {origin.netloc}: {reason}"
            ) from None
        except urllib3.exceptions.ConnectTimeoutError:
            raise answers.AttemptError(
                "unreachable", f"connecting to {origin.netloc} timed out"
            ) from None
        except urllib3.exceptions.ReadTimeoutError:
            raise answers.AttemptError(
                "unreachable", f"{origin.netloc} did not answer in time"
            ) from None
        except (urllib3.exceptions.ProtocolError, urllib3.exceptions.HTTPError) as e:
            raise answers.AttemptError(
                "unreachable", f"connection to {origin.netloc} failed: {type(e).__name__}"
            ) from None
        try:
            data = b"" if method == "HEAD" else raw.read(MAX_BODY_BYTES + 1)
        except urllib3.exceptions.HTTPError as e:
            raise answers.AttemptError(
                "unreachable", f"reading from {origin.netloc} failed: {type(e).__name__}"
            ) from None
        finally:
            raw.release_conn()
        if len(data) > MAX_BODY_BYTES:
            raise answers.AttemptError(
                "error", f"{origin.netloc} sent more than {MAX_BODY_BYTES} bytes"
            )
        response_headers = {k.lower(): v for k, v in raw.headers.items()}
        logger.debug("%s %s -> %d", method, where.loggable, raw.status)
        return answers.Response(raw.status, response_headers, data, where.loggable, origin)


def retry_after(headers: Mapping[str, str], now: float) -> float | None:
    """Seconds a ``Retry-After`` header asks to wait (delta or HTTP date), or None."""
    value = headers.get("retry-after")
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now)


def _connection_reason(error: Exception) -> str:
    text = str(error).lower()
    for needle, reason in (
        ("refused", "connection refused"),
        ("name or service not known", "unknown host"),
        ("nodename nor servname", "unknown host"),
        ("temporary failure in name resolution", "name resolution failed"),
        ("no route", "no route to host"),
        ("unreachable", "network unreachable"),
    ):
        if needle in text:
            return reason
    return type(error).__name__


def _tls_detail(origin: urls.Origin, error: Exception) -> str:
    text = str(error)
    if "CERTIFICATE_VERIFY_FAILED" in text or "certificate verify failed" in text:
        return (
            f"TLS verification of {origin.netloc} failed (certificate not trusted); "
            "set scan.registry_ca_bundle to its CA, or list it in scan.insecure_registries"
        )
    if "WRONG_VERSION_NUMBER" in text or "wrong version number" in text or "record layer" in text:
        return f"{origin.netloc} is not speaking TLS"
    return f"TLS handshake with {origin.netloc} failed"
