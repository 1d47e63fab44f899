"""Publishing scan tasks by name on a cluster's queue, without importing the workers.

The watcher must not depend on the worker package (it runs in its own
image, and the library never imports ``workers``), so it sends the task by
its registered name, ``scanqueue.scan``, on the Celery queue of the cluster
that runs the image (``scan.<cluster>``), with one keyword argument:
``request``, the versioned payload of ``discovery.to_payload``.

This is the one library module allowed to import Celery (the import-linter
contract "library-without-celery" makes an exception for it alone), and only
for a bare client: ``celery.Celery(broker=...)`` and ``send_task``. The payload
holds names and references, never a credential value; JSON only.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

import celery
import kombu.exceptions
import kombu.transport
from kombu.transport import redis as kombu_redis

from scanqueue import discovery, errors

TASK_NAME = "scanqueue.scan"
COLLECT_JOB_TASK = "scanqueue.collect_job"
TRANSPORT = "scanqueue.publish:RedisTransport"


class _Channel(kombu_redis.Channel):
    """kombu's Redis channel with one ``redis.Redis`` client per connection pool.

    kombu builds a new client for each command it sends outside its event loop (each
    message a worker receives is added to the unacked set, then acked; each publish):
    redis-py 8 rebuilds its response-callback table for every client, ~0.15 ms of CPU, a
    few times per task. A client holds no connection (its pool does) and is safe to share
    between threads; a new pool (after a reconnection) gets a new client.
    """

    _shared: Any = None

    def _create_client(self, asynchronous: bool = False) -> Any:
        if asynchronous:  # the event loop's own client: kombu keeps that one already
            return super()._create_client(asynchronous=True)  # type: ignore[no-untyped-call]
        shared = self._shared
        if shared is None or shared.connection_pool is not self.pool:
            shared = self._shared = super()._create_client()  # type: ignore[no-untyped-call]
        return shared


class RedisTransport(kombu_redis.Transport):
    """kombu's Redis transport (redis:// and rediss://) with ``_Channel``."""

    Channel = _Channel


def use_shared_clients() -> None:
    """Make ``RedisTransport`` kombu's transport for ``redis://`` and ``rediss://`` URLs in
    this process (the farm's processes call it before they connect). Registered under the
    schemes' own names, not set as Celery's ``broker_transport``, so that a connection still
    names its URL ``redis://...`` (Flower picks its broker page by that scheme)."""
    for scheme in ("redis", "rediss"):
        kombu.transport.TRANSPORT_ALIASES[scheme] = TRANSPORT


def scan_shown(payload: Mapping[str, Any]) -> str:
    """What Flower and task events show of a scan task's arguments: the digest and the pod.

    Given as ``kwargsrepr``, so that Celery does not ``saferepr`` the whole payload for each
    task sent (a fifth of the watcher's CPU in a burst); it names references only, as the
    payload does."""
    return (
        f"{{'request': '{payload.get('digest')} for "
        f"{payload.get('namespace')}/{payload.get('pod')}'}}"
    )


def queue_name(cluster: str) -> str:
    """The Celery queue of ``cluster``'s scans: ``scan.<cluster>``."""
    return f"scan.{cluster}"


class Publisher:
    """A bare Celery client that sends scan tasks to Redis. Safe to share between threads.

    Connects lazily, on the first publish; call ``close`` when done.
    """

    def __init__(
        self,
        broker_url: str,
        *,
        password: str | None = None,
        tls: Mapping[str, Any] | None = None,
    ) -> None:
        self._app = celery.Celery("scanqueue-watcher", broker=broker_url, set_as_current=False)
        use_shared_clients()
        if tls:  # rediss:// (config.redis_tls): kombu wants the options, not only the scheme
            self._app.conf.broker_use_ssl = dict(tls)
        self._app.conf.update(
            broker_password=password or None,  # kombu keeps it when the URL has none
            task_serializer="json",
            accept_content=["json"],
            task_create_missing_queues=True,
            broker_connection_retry_on_startup=True,
            # without these a publish on a connection Redis never answers waits forever
            broker_transport_options={"socket_timeout": 10.0, "socket_connect_timeout": 10.0},
        )

    def publish(self, request: discovery.ScanRequest, *, producer: Any = None) -> str:
        """Send the scan task for ``request`` on its cluster's queue; return the task id.

        The task id is the request's ``scan_id`` when it has one, so the scan,
        its in-flight key and its Celery task share one name. Raises
        ``TemporaryError`` when the broker cannot be reached. ``producer`` is
        one from ``batch()``, to send many tasks over one connection.
        """
        payload = discovery.to_payload(request)
        result = self._send(
            TASK_NAME,
            kwargs={"request": payload},
            queue=queue_name(request.cluster),
            what=f"the scan of {request.digest} ({request.namespace}/{request.pod})",
            task_id=request.scan_id or None,
            producer=producer,
            kwargsrepr=scan_shown(payload),
        )
        return str(result.id)

    def publish_collect(self, cluster: str, job: str, summary: dict[str, Any]) -> None:
        """Send ``scanqueue.collect_job`` for the finished scan Job ``job`` of ``cluster``.

        ``summary`` is ``jobwatch.summary`` of the Job (names, annotations, status:
        references only). Raises ``TemporaryError`` when the broker cannot be reached.
        """
        self._send(
            COLLECT_JOB_TASK,
            kwargs={"cluster": cluster, "job": job, "summary": summary},
            queue=queue_name(cluster),
            what=f"the collect of scan Job {job}",
            kwargsrepr=f"{{'cluster': '{cluster}', 'job': '{job}'}}",
        )

    def _send(
        self, name: str, *, kwargs: dict[str, Any], queue: str, what: str, **options: Any
    ) -> Any:
        """``send_task`` with the broker's retries; a broker out of reach is a ``TemporaryError``
        naming ``what`` was being published."""
        try:
            return self._app.send_task(
                name,
                kwargs=kwargs,
                argsrepr="()",
                queue=queue,
                retry=True,
                retry_policy={"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5},
                **options,
            )
        except (kombu.exceptions.OperationalError, OSError) as e:
            raise errors.TemporaryError(
                f"cannot publish {what} on queue {queue}: {e}; is the broker (Redis) up?"
            ) from e

    @contextlib.contextmanager
    def batch(self) -> Iterator[Any]:
        """A producer (one broker connection) to pass to several ``publish`` calls."""
        try:
            with self._app.producer_or_acquire() as producer:
                yield producer
        except (kombu.exceptions.OperationalError, OSError) as e:
            raise errors.TemporaryError(
                f"cannot reach the broker to publish scan tasks: {e}; is Redis up?"
            ) from e

    def close(self) -> None:
        """Release the broker connections."""
        self._app.close()
