"""``scanqueue run`` and ``scanqueue demo``: the whole farm as local processes.

The logic is in ``scanqueue.farm``; this module maps options and signals to it.
"""

from __future__ import annotations

import argparse
import sys

from scanqueue.cli import parsing, serving


def add_commands(sub: parsing.Subparsers) -> None:
    _add_farm_commands(sub)


def _add_farm_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--flower-address", default="127.0.0.1", help="default 127.0.0.1")
    p.add_argument("--flower-port", type=int, default=5555, help="default 5555; 0: a free port")
    p.add_argument(
        "--flower-unauthenticated",
        action="store_true",
        help="run Flower without FLOWER_BASIC_AUTH (loopback only; for local use)",
    )
    p.add_argument("--concurrency", type=int, default=2, help="worker processes (default 2)")
    p.add_argument("--state-dir", metavar="DIR", help="keep settings, logs and demo data here")
    p.add_argument(
        "--private-services",
        action="store_true",
        help="embedded default: start its own Redis and PostgreSQL even if others answer",
    )
    p.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ERROR")


def _add_farm_commands(sub: parsing.Subparsers) -> None:
    p = sub.add_parser(
        "run",
        help="run the whole farm locally: migrations, watcher, worker, beat, Flower, exporter",
        description=(
            "Apply migrations, then run the watcher, a Celery worker with beat embedded and "
            "Flower against the clusters of scanqueue.toml, until Ctrl-C. With no "
            "scanqueue.toml and no kubeconfig, run the embedded default: the bundled demo "
            "cluster on the Kubernetes API emulator and a local private registry. Flower "
            "needs FLOWER_BASIC_AUTH=user:password (the embedded default generates one)."
        ),
    )
    _add_farm_options(p)
    p.add_argument("--demo", action="store_true", help="the embedded default, whatever exists")
    p.set_defaults(command=_cmd_run, until_scanned=False)
    p = sub.add_parser(
        "demo",
        help="the embedded default until the demo cluster is scanned; print the report",
        description=(
            "Start the embedded default of `scanqueue run`, wait until every image of the "
            "demo cluster has a finished scan, print `scanqueue report`, stop everything. "
            "Exit 0 when every image was scanned, 1 otherwise (with the reasons)."
        ),
    )
    _add_farm_options(p)
    p.add_argument(
        "--timeout", type=float, default=600.0, metavar="S", help="give up after S seconds"
    )
    p.set_defaults(command=_cmd_run, until_scanned=True, demo=True)


def _cmd_run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from scanqueue import cli, farm

    options = farm.Options(
        demo=args.demo,
        until_scanned=args.until_scanned,
        timeout_seconds=getattr(args, "timeout", 600.0),
        concurrency=args.concurrency,
        flower_address=args.flower_address,
        flower_port=args.flower_port,
        flower_unauthenticated=args.flower_unauthenticated,
        state_dir=Path(args.state_dir) if args.state_dir else None,
        private_services=args.private_services,
        log_level=args.log_level,
    )
    stop = serving.stop_on_signals()
    report_codes: list[int] = []

    def report(summary: farm.RunSummary) -> None:
        """The demo's report, printed while its database (maybe its own) still runs."""
        if not args.until_scanned or summary.cluster is None:
            return
        if summary.unfinished:
            print("scanqueue: not every image of the demo cluster was scanned:", file=sys.stderr)
            for line in summary.unfinished:
                print(f"  - {line}", file=sys.stderr)
        sys.stdout.flush()
        report_codes.append(
            cli.main(
                ["report", "--cluster", summary.cluster, "--database-url", summary.database_url]
            )
        )

    summary = farm.run(options, stop=stop, before_stop=report)
    return summary.exit_code or max(report_codes, default=0)
