"""``scanqueue status``: per cluster, where the scans stand, and whether collecting stalled.

Reads Redis only (``scanqueue.status``): queued, waiting for a slot, in
flight, the oldest in flight, the last collect and sweep. Exits 1 when a
cluster with scan Jobs in flight has not been collected for several collect
intervals (beat stopped, the cluster's API fails...), so a probe or a person
sees the stall. It prints counts and times only.
"""

from __future__ import annotations

import argparse
import sys
import time

from scanqueue import config
from scanqueue.cli import parsing, render

COLUMNS = ("cluster", "queued", "waiting", "in_flight", "oldest_in_flight_s",
           "last_collect_s_ago", "last_sweep_s_ago", "state")  # fmt: skip


def add_commands(sub: parsing.Subparsers) -> None:
    p = sub.add_parser(
        "status",
        help="per cluster: scans queued, waiting for a slot, in flight, the oldest in flight, "
        "the last collect and sweep; exit 1 when collecting stalled",
    )
    p.add_argument("--cluster", action="append", default=[], metavar="NAME",
                   help="a configured cluster (repeatable); default: every one")  # fmt: skip
    p.add_argument("--format", default="table", choices=["table", "json"])
    p.add_argument(
        "--stall-intervals",
        type=int,
        default=None,
        metavar="N",
        help="collect intervals without a collect, Jobs in flight, that count as a stall "
        "(default 5)",
    )
    p.set_defaults(command=_cmd_status)


def _seconds(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def _cmd_status(args: argparse.Namespace) -> int:
    from scanqueue import dedupe, publish, status

    settings = config.load()
    names = args.cluster or [c.name for c in settings.clusters]
    for name in names:
        settings.cluster(name)  # an unknown name is a configuration error
    intervals = args.stall_intervals or status.STALL_INTERVALS
    client = dedupe.client(
        settings.broker.url,
        password=config.broker_password(settings.broker),
        tls=config.redis_tls(settings.broker, settings.broker.url),
    )
    queues = [publish.queue_name(n) for n in names]
    try:
        found = status.read(client, clusters=names, queues=queues, now=time.time())
    finally:
        client.close()
    interval = settings.scan.collect_interval_seconds
    rows = []
    stalled = []
    for s in found:
        stall = s.stalled(collect_interval=interval, intervals=intervals)
        if stall:
            stalled.append(s.cluster)
        last_sweep = None if s.last_sweep is None else s.now - s.last_sweep
        rows.append((s.cluster, s.queued, s.waiting, s.in_flight,
                     _seconds(s.oldest_in_flight_seconds), _seconds(s.since_collect()),
                     _seconds(last_sweep), "STALLED" if stall else "ok"))  # fmt: skip
    if args.format == "json":
        print(render.as_json(COLUMNS, rows))
    else:
        print(render.as_table(COLUMNS, rows, width=render.terminal_width()))
    if stalled:
        print(
            f"scanqueue: no collect completed for {intervals} x {interval:g}s in "
            f"{', '.join(stalled)} while scan Jobs are in flight: is beat running, and can the "
            "workers reach the cluster's API? (see the worker and beat logs)",
            file=sys.stderr,
        )
        return 1
    return 0
