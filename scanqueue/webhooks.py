"""POST a notification to one webhook: the only module of alerting that talks to the network.

It connects to exactly the host and port of the parsed ``alerts.Webhook``
(the one URL parser; the standard library's ``http.client`` is handed host,
port and path, never a URL), with a connect and read timeout, and sorts the outcome
into ``TemporaryError`` (timeout, refused connection, 5xx, 408, 429: retried
with backoff) and ``PermanentError`` (any other 4xx, a redirect: dead letter
at once, with the reason).

It must never follow a redirect (the Authorization header built from the
URL's user and password would go to wherever the redirect points), never
send anything but the body it was given, and never put the URL, its path or
its password into an exception or a log line: a webhook is ``slack#0 (host)``.
"""

from __future__ import annotations

import base64
import http.client
import logging
import ssl

import scanqueue
from scanqueue import alerts, errors

log = logging.getLogger(__name__)


def post(webhook: alerts.Webhook, body: bytes, *, timeout: float) -> int:
    """POST ``body`` (JSON) to ``webhook``; return the 2xx status.

    Raises ``TemporaryError`` or ``PermanentError`` naming the webhook (never its URL).
    """
    headers = {
        "Content-Type": "application/json",
        "User-Agent": f"scanqueue/{scanqueue.__version__}",
    }
    if webhook.username or webhook.password:
        token = base64.b64encode(f"{webhook.username}:{webhook.password}".encode()).decode()
        headers["Authorization"] = f"Basic {token}"
    # http.client with the parsed host, port and path: no second URL parser decides where
    # this goes, and it never follows a redirect.
    conn: http.client.HTTPConnection
    if webhook.scheme == "https":
        conn = http.client.HTTPSConnection(
            webhook.host, webhook.port, timeout=timeout, context=ssl.create_default_context()
        )
    else:
        conn = http.client.HTTPConnection(webhook.host, webhook.port, timeout=timeout)
    try:
        conn.request("POST", webhook.target, body=body, headers=headers)
        response = conn.getresponse()
        response.read()
    except TimeoutError:
        raise errors.TemporaryError(
            f"webhook {webhook.display} timed out after {timeout:g}s; retried later"
        ) from None
    except (OSError, http.client.HTTPException) as e:
        raise errors.TemporaryError(
            f"webhook {webhook.display} unreachable ({type(e).__name__}); retried later"
        ) from None
    finally:
        conn.close()
    status = int(response.status)
    if 200 <= status < 300:
        return status
    if status >= 500 or status in (408, 429):
        raise errors.TemporaryError(f"webhook {webhook.display} answered HTTP {status}; retried")
    if 300 <= status < 400:
        raise errors.PermanentError(
            f"webhook {webhook.display} answered a redirect (HTTP {status}), which is not "
            "followed; configure the URL it redirects to"
        )
    raise errors.PermanentError(
        f"webhook {webhook.display} refused the notification (HTTP {status}); check its URL, "
        "credentials and the payload shape it expects"
    )
