"""The watcher process: a ``ClusterWatcher`` and a ``jobwatch.JobWatcher`` per cluster.

Opens the collaborators once per process (Redis client, Postgres pool, one broker client
per cluster), runs every cluster's threads until ``stop`` is set, and closes them all.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Sequence

from scanqueue import config, dedupe, errors, jobwatch, kube, publish, store
from scanqueue.watcher.cluster import ClusterWatcher
from scanqueue.watcher.pacing import DEFAULT_OPTIONS, WatchOptions


def run(
    settings: config.Settings,
    *,
    clusters: Sequence[str] = (),
    stop: threading.Event,
    options: WatchOptions = DEFAULT_OPTIONS,
) -> None:
    """Watch ``clusters`` (default: all configured) until ``stop`` is set, one thread each.

    Opens the collaborators once per process (Redis client, Postgres pool,
    one broker client per cluster) and closes them after the last flush.
    Raises ``ConfigError`` for an unknown cluster or no cluster at all.
    """
    chosen = [settings.cluster(n) for n in clusters] if clusters else list(settings.clusters)
    if not chosen:
        raise errors.ConfigError(f"{settings.source}: no [[clusters]] configured; nothing to watch")
    redis_client = dedupe.client(
        settings.broker.url,
        password=config.broker_password(settings.broker),
        tls=config.redis_tls(settings.broker, settings.broker.url),
    )
    pool = store.pool(
        settings.database.url,
        min_size=settings.database.pool_min_size,
        max_size=settings.database.pool_max_size,
        password=config.database_password(settings.database),
    )
    publishers: list[publish.Publisher] = []
    threads: list[threading.Thread] = []
    try:
        for cluster in chosen:
            publisher = publish.Publisher(
                settings.broker.url,
                password=config.broker_password(settings.broker),
                tls=config.redis_tls(settings.broker, settings.broker.url),
            )
            publishers.append(publisher)
            watcher = ClusterWatcher(
                cluster=cluster,
                scan=settings.scan,
                api=kube.api_client(cluster),
                redis_client=redis_client,
                publisher=publisher,
                pool=pool,
                stop=stop,
                options=options,
            )
            threads.append(watcher.start())
            jobs = jobwatch.JobWatcher(
                cluster=cluster,
                api=kube.api_client(cluster),
                send=functools.partial(publisher.publish_collect, cluster.name),
                stop=stop,
            )
            threads.append(jobs.start())
        for thread in threads:
            thread.join()
    finally:
        stop.set()
        for thread in threads:
            thread.join()
        for publisher in publishers:
            publisher.close()
        pool.close()
        redis_client.close()
