"""``scanqueue exporter``: serve the vulnerability metrics (``scanqueue.vulnmetrics``) on /metrics.

One exporter per farm: its numbers come from Postgres, not from the process,
so a second one would only double the queries (see ``vulnmetrics``).
"""

from __future__ import annotations

import argparse
import logging
import threading

from scanqueue import config
from scanqueue.cli import parsing, serving

log = logging.getLogger(__name__)


def add_commands(sub: parsing.Subparsers) -> None:
    p = sub.add_parser(
        "exporter",
        help="serve vulnerability metrics from Postgres for Prometheus (one per farm)",
        description=(
            "Serve findings per workload and severity, image scan states and scan age on "
            "http://ADDRESS:PORT/metrics, computed from the database and cached between "
            "scrapes. Run one per farm: every replica would run the same queries."
        ),
    )
    p.add_argument("--address", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=9464, help="listen port (default 9464; 0: free)")
    p.add_argument(
        "--ttl", type=float, default=15.0, help="seconds a result is served before re-querying"
    )
    p.add_argument("--database-url", help="libpq URL; default: database.url from the settings")
    p.set_defaults(command=_cmd_exporter)


def _cmd_exporter(args: argparse.Namespace) -> int:
    from scanqueue import logs, store, vulnmetrics
    from scanqueue.store import overview

    logs.setup("INFO", "json")
    settings = config.load()
    url = args.database_url or settings.database.url
    password = config.database_password(settings.database)
    pool = store.pool(url, min_size=1, max_size=2, password=password)

    def fetch() -> overview.Snapshot:
        with pool.connection() as conn:
            return overview.snapshot(conn)

    cache = vulnmetrics.Cache(fetch, ttl_seconds=args.ttl)
    server = vulnmetrics.serve(cache, address=args.address, port=args.port)
    thread = threading.Thread(target=server.serve_forever, name="exporter", daemon=True)

    def start() -> str:
        thread.start()
        host, port = str(server.server_address[0]), int(server.server_address[1])
        log.info("vulnerability metrics served on http://%s:%d/metrics", host, port)
        return f"serving http://{host}:{port}/metrics"

    def stop() -> None:
        if thread.is_alive():  # shutdown() waits for serve_forever, which never ran otherwise
            server.shutdown()
        server.server_close()
        cache.close()
        pool.close()

    return serving.serve_until_signal(start, stop)
