"""``scanqueue rescan`` and ``scanqueue prune``: the day-two chores, without touching Redis by hand.

``rescan`` ends the wait of digests marked "failed here" (a pull secret was
fixed, a registry came back) and, with ``--force``, forgets that they are
fresh; the watchers then publish them on their next check of running digests
(``--reevaluate-seconds``, a minute by default), through the normal dedupe:
a scan in flight is never doubled. ``prune`` deletes inventory rows of
containers gone for longer than ``database.retain_gone_days``, then prunes the
alert ledger (``store.prune``: outbox, dead letters, dedupe ledger).

Neither ever prints a credential: only digests, clusters and reasons.
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime

from scanqueue import config, errors
from scanqueue.cli import parsing


def add_commands(sub: parsing.Subparsers) -> None:
    p = sub.add_parser(
        "rescan",
        help="end the 'failed here' wait of digests (by digest, image, workload, namespace, "
        "cluster or reason) so the watchers publish them again within a minute",
    )
    p.add_argument("--digest", action="append", default=[], metavar="SHA", help="repeatable")
    p.add_argument("--image", metavar="IMAGE", help="image as in the pod spec, with or without tag")
    p.add_argument("--workload", metavar="[KIND/]NAME", help="e.g. Deployment/web")
    p.add_argument("--namespace", metavar="NS")
    p.add_argument(
        "--cluster", action="append", default=[], metavar="NAME", help="repeatable; default: all"
    )
    p.add_argument(
        "--reason",
        choices=["credential", "transient", "failed"],
        help="only marks of this kind: credential (401/403, no secret), transient "
        "(timeout, pod not started), failed (Trivy or its report)",
    )
    p.add_argument("--all", action="store_true", help="every running digest (no other filter)")
    p.add_argument(
        "--force", action="store_true", help="also forget fresh scans: scan again even if fresh"
    )
    p.add_argument("--dry-run", action="store_true", help="list what would be cleared")
    p.set_defaults(command=_cmd_rescan)

    p = sub.add_parser(
        "prune",
        help="delete inventory rows of containers gone for longer than database.retain_gone_days, "
        "alert outbox rows planned alerts.keep_sent_days ago, dead letters older than "
        "alerts.keep_dead_days and the alert ledger of workloads no longer in the inventory",
    )
    p.add_argument("--days", type=int, metavar="N", help="override database.retain_gone_days")
    p.set_defaults(command=_cmd_prune)


def _targets(args: argparse.Namespace, settings: config.Settings) -> list[tuple[str, str]]:
    """(cluster, digest) pairs the filters select."""
    from scanqueue import store

    clusters = tuple(settings.cluster(n).name for n in args.cluster) or tuple(
        c.name for c in settings.clusters
    )
    if not clusters:
        raise errors.ConfigError(f"{settings.source}: no [[clusters]] configured; nothing to do")
    running_filters = (args.image, args.workload, args.namespace, args.all, args.cluster)
    if args.digest and not any(running_filters):
        # Digests alone need no inventory: clear them in every chosen cluster.
        return [(c, d) for d in args.digest for c in clusters]
    if not any(running_filters) and not args.digest:
        raise errors.PermanentError(
            "rescan: name what to rescan: --digest, --image, --workload, --namespace, "
            "--cluster or --all"
        )
    with store.connect(
        settings.database.url, password=config.database_password(settings.database)
    ) as conn:
        return store.select_digests(
            conn,
            clusters=clusters,
            namespace=args.namespace,
            workload=args.workload,
            image=args.image,
            digests=tuple(args.digest),
        )


def _cmd_rescan(args: argparse.Namespace) -> int:
    from scanqueue import dedupe, failures

    settings = config.load()
    targets = _targets(args, settings)
    if not targets:
        print("rescan: no running container matches; nothing to do")
        return 0
    redis_client = dedupe.client(
        settings.broker.url,
        password=config.broker_password(settings.broker),
        tls=config.redis_tls(settings.broker, settings.broker.url),
    )
    try:
        marks = dedupe.failed_marks_of(redis_client, targets)
        if args.reason:
            marks = [(d, m) for d, m in marks if m.kind == args.reason]
        for digest, mark in marks:
            print(f"{'would clear' if args.dry_run else 'cleared'} {digest} in {mark.cluster}: "
                  f"{mark.kind or 'unknown'} ({failures.describe(mark.kind)}; "
                  f"{mark.ttl_seconds}s left)")  # fmt: skip
        cleared = len(marks)
        if not args.dry_run:
            pairs = [(m.cluster, d) for d, m in marks]
            cleared = dedupe.clear_marks(redis_client, pairs)
            if args.force and not args.reason:
                dedupe.clear_marks(redis_client, list(targets), fresh=True)
    finally:
        redis_client.close()
    digests = len({d for _, d in targets})
    verb = "would clear" if args.dry_run else "cleared"
    print(
        f"rescan: {verb} {cleared} failed mark(s) over {digests} digest(s)"
        + (" and their fresh scans" if args.force and not args.reason else "")
        + "; the watchers publish them at their next check of running digests "
        "(every 60 s by default); a scan in flight is not doubled"
    )
    return 0


def _cmd_prune(args: argparse.Namespace) -> int:
    from scanqueue import store

    settings = config.load()
    days = settings.database.retain_gone_days if args.days is None else args.days
    if days < 0:
        raise errors.PermanentError("prune: --days must be 0 or more")
    with store.connect(
        settings.database.url, password=config.database_password(settings.database)
    ) as conn:
        pruned = store.prune(
            conn,
            now=datetime.now(UTC),
            retain_gone_days=days,
            keep_sent_days=settings.alerts.keep_sent_days,
            keep_dead_days=settings.alerts.keep_dead_days,
        )
    if days == 0:
        print("prune: database.retain_gone_days is 0: inventory rows are kept forever")
    else:
        print(
            f"prune: deleted {pruned.containers} container row(s) gone for more than {days} "
            f"day(s) and {pruned.workloads} workload(s) left without containers; scans are kept"
        )
    print(
        f"prune: alerts: deleted {pruned.alert_outbox} outbox row(s) planned more than "
        f"{settings.alerts.keep_sent_days} day(s) ago, {pruned.dead_letters} dead letter(s) "
        f"{_dead_age(settings.alerts.keep_dead_days)}, {pruned.alert_ledger} ledger row(s) "
        "of workloads no longer in the inventory"
    )
    return 0


def _dead_age(days: int) -> str:
    return f"older than {days} day(s)" if days else "(alerts.keep_dead_days 0: kept forever)"
