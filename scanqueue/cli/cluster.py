"""``scanqueue watch`` and ``scanqueue explain``: the watcher, and why a pod gets its credentials.

``explain`` prints credential sources and registry keys, never a credential's value.
"""

from __future__ import annotations

import argparse

from scanqueue import config, errors
from scanqueue.cli import parsing


def add_commands(sub: parsing.Subparsers) -> None:
    _add_watch_commands(sub)


def _add_watch_commands(sub: parsing.Subparsers) -> None:
    p = sub.add_parser(
        "watch",
        help="watch the clusters' pods; record the inventory and publish one scan per digest",
    )
    p.add_argument(
        "--cluster",
        action="append",
        default=[],
        metavar="NAME",
        help="a configured cluster to watch (repeatable); default: every configured cluster",
    )
    p.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on this port")
    p.add_argument("--metrics-address", default="127.0.0.1", help="address for --metrics-port")
    p.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ERROR")
    p.add_argument("--log-format", default="json", choices=["json", "kv"])
    p.add_argument(
        "--reevaluate-seconds",
        type=float,
        default=60.0,
        metavar="S",
        help="how often every running digest is checked again (rescans, other clusters' "
        "failures); default 60",
    )
    p.set_defaults(command=_cmd_watch)

    p = sub.add_parser(
        "explain",
        help="per container of a pod: digest, candidate credentials in order, last scan",
    )
    p.add_argument("pod", metavar="POD")
    p.add_argument("--cluster", required=True, metavar="NAME", help="a configured cluster")
    p.add_argument("--namespace", default="default", metavar="NS", help="default: default")
    p.set_defaults(command=_cmd_explain)


def _cmd_watch(args: argparse.Namespace) -> int:
    import signal
    import threading

    from scanqueue import logs, metrics, watcher

    settings = config.load()
    logs.setup(args.log_level, args.log_format)
    for name in args.cluster:
        settings.cluster(name)  # an unknown name fails before anything starts
    stop = threading.Event()

    def request_stop(signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    if args.metrics_port is not None:
        metrics.serve(args.metrics_port, address=args.metrics_address)
    if args.reevaluate_seconds <= 0:
        raise errors.ConfigError("--reevaluate-seconds must be positive")
    options = watcher.WatchOptions(reevaluate_interval_seconds=args.reevaluate_seconds)
    watcher.run(settings, clusters=args.cluster, stop=stop, options=options)
    return 0


def _cmd_explain(args: argparse.Namespace) -> int:
    from scanqueue import dedupe, kube, store, watcher

    settings = config.load()
    cluster = settings.cluster(args.cluster)
    api = kube.api_client(cluster)
    redis_client = dedupe.client(settings.broker.url)
    try:
        with store.connect(settings.database.url) as conn:
            views = watcher.explain(
                settings=settings,
                cluster=cluster.name,
                namespace=args.namespace,
                pod=args.pod,
                api=api,
                redis_client=redis_client,
                conn=conn,
            )
    finally:
        redis_client.close()
    print(f"pod {args.namespace}/{args.pod} in cluster {cluster.name}")
    for view in views:
        r = view.request
        print(f"\n{r.container_type} container {r.container}: {r.image}")
        print(f"  workload   {r.workload_kind}/{r.workload_name}, node {r.node or '-'}")
        print(f"  digest     {r.digest or '(not running yet: no imageID)'}")
        if view.candidates:
            print("  credentials, in the order they are tried:")
            for i, c in enumerate(view.candidates, 1):
                print(f"    {i}. secret {c.source}, registry key {c.key}")
        else:
            print("  credentials: none match (anonymous pull, then node mode)")
        for note in view.notes:
            print(f"  note       {note}")
        scan = view.last_scan
        if scan is None:
            print("  last scan  none")
        else:
            when = scan.finished_at or scan.started_at
            how = f"{scan.mode}" + (
                f" with {scan.credential_source}" if scan.credential_source else ""
            )
            print(
                f"  last scan  {scan.status} in {scan.cluster} at {when:%Y-%m-%d %H:%M:%S %Z} "
                f"({how}; {scan.findings} findings)"
            )
            if scan.error:
                print(f"             {scan.error}")
        state = "fresh" if view.fresh else "due"
        if view.in_flight is not None:
            state = f"in flight in {view.in_flight.cluster} (scan {view.in_flight.scan_id})"
        if view.failed_in:
            state += f"; failed in {', '.join(view.failed_in)} this interval"
        print(f"  farm       {state}")
    return 0
