"""``scanqueue watch`` and ``scanqueue explain``: the watcher, and why a pod gets its credentials.

``explain`` prints credential sources and registry keys, never a credential's value.
"""

from __future__ import annotations

import argparse
from typing import Any

from scanqueue import config, errors
from scanqueue.cli import parsing, serving


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
        help="per container of a pod: digest, candidate credentials in order, last scan, "
        "when the next scan attempt is",
        description="Read the pod with YOUR identity: --kubeconfig/--context, else $KUBECONFIG, "
        "else the cluster's configured one. deploy/23-rbac-explain.yaml is the read-only role "
        "it needs. Redis and the database are optional: what could not be read is listed as "
        "skipped.",
    )
    p.add_argument("pod", metavar="POD")
    p.add_argument("--cluster", required=True, metavar="NAME", help="a configured cluster")
    p.add_argument("--namespace", default="default", metavar="NS", help="default: default")
    p.add_argument("--kubeconfig", metavar="PATH", help="default: $KUBECONFIG, else the config's")
    p.add_argument("--context", metavar="NAME", help="kubeconfig context; default: current")
    p.add_argument("--no-database", action="store_true", help="do not read the last scan")
    p.add_argument("--no-redis", action="store_true", help="do not read the farm's state")
    p.set_defaults(command=_cmd_explain)


def _cmd_watch(args: argparse.Namespace) -> int:

    from scanqueue import logs, metrics, watcher

    settings = config.load()
    logs.setup(args.log_level, args.log_format)
    for name in args.cluster:
        settings.cluster(name)  # an unknown name fails before anything starts
    stop = serving.stop_on_signals()
    if args.metrics_port is not None:
        metrics.serve(args.metrics_port, address=args.metrics_address)
    if args.reevaluate_seconds <= 0:
        raise errors.ConfigError("--reevaluate-seconds must be positive")
    options = watcher.WatchOptions(reevaluate_interval_seconds=args.reevaluate_seconds)
    watcher.run(settings, clusters=args.cluster, stop=stop, options=options)
    return 0


def _explain_cluster(args: argparse.Namespace, settings: config.Settings) -> Any:
    """The cluster to read, with the identity the person asked for."""
    import dataclasses
    import os

    kubeconfig = args.kubeconfig or os.environ.get("KUBECONFIG", "").split(os.pathsep)[0]
    known = {c.name: c for c in settings.clusters}
    if not kubeconfig:
        return settings.cluster(args.cluster)  # the farm's identity; unknown name: an error
    base = known.get(args.cluster) or config.ClusterSettings(name=args.cluster, kubeconfig="-")
    return dataclasses.replace(
        base, kubeconfig=kubeconfig, in_cluster=False, context=args.context or ""
    )


def _cmd_explain(args: argparse.Namespace) -> int:
    import contextlib

    from scanqueue import dedupe, explain, kube, store

    settings = config.load()
    cluster = _explain_cluster(args, settings)
    api = kube.api_client(cluster)
    redis_client = (
        None
        if args.no_redis
        else dedupe.client(
            settings.broker.url,
            password=config.broker_password(settings.broker),
            tls=config.redis_tls(settings.broker, settings.broker.url),
        )
    )
    skipped = ["last scan (--no-database)"] if args.no_database else []
    try:
        with contextlib.ExitStack() as stack:
            conn = None
            if not args.no_database:
                try:
                    conn = stack.enter_context(
                        store.connect(
                            settings.database.url,
                            password=config.database_password(settings.database),
                        )
                    )
                except errors.TemporaryError as e:
                    skipped.append(f"last scan: {e}")
            views = explain.pod(
                settings=settings,
                cluster=cluster.name,
                namespace=args.namespace,
                pod=args.pod,
                api=api,
                redis_client=redis_client,
                conn=conn,
            )
    finally:
        api.close()  # type: ignore[no-untyped-call]
        if redis_client is not None:
            redis_client.close()
    identity = "in-cluster service account" if cluster.in_cluster else cluster.kubeconfig
    if cluster.context:
        identity += f", context {cluster.context}"
    print(f"pod {args.namespace}/{args.pod} in cluster {cluster.name} (read as {identity})")
    for view in views:
        _print_view(view)
    for what in dict.fromkeys([*skipped, *(s for v in views for s in v.skipped)]):
        print(f"\nskipped: {what}")
    return 0


def _print_view(view: Any) -> None:
    from scanqueue import failures

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
        how = f"{scan.mode}" + (f" with {scan.credential_source}" if scan.credential_source else "")
        print(
            f"  last scan  {scan.status} in {scan.cluster} at {when:%Y-%m-%d %H:%M:%S %Z} "
            f"({how}; {scan.findings} findings)"
        )
        if scan.error:
            print(f"             {scan.error}")
    state = "fresh" if view.fresh else "due"
    if view.in_flight is not None:
        state = f"in flight in {view.in_flight.cluster} (scan {view.in_flight.scan_id})"
    print(f"  farm       {state}")
    upcoming = view.next_evaluation
    if upcoming is not None:
        kind = "rescan from the stored SBOM" if upcoming.next == "sbom" else "full scan"
        print(f"  next       {kind}{' (due now)' if upcoming.due else ''}: {upcoming.why}")
    for mark in view.failed:
        print(
            f"  failed in  {mark.cluster}: {mark.kind or 'unknown'} "
            f"({mark.in_a_row} in a row); next attempt there in {mark.ttl_seconds}s: "
            f"{failures.describe(mark.kind)}"
        )
