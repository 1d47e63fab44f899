"""``scanqueue rbac``: the RoleBindings and Roles a cluster's watched namespaces need.

Prints YAML for ``kubectl apply -f -`` (``scanqueue.rbac``): per watched
namespace, the watcher's RoleBinding and the worker's pull-Secret Role and
RoleBinding; for a cluster watching every namespace, the watcher's
ClusterRoleBinding. It reads the settings only; it never talks to a cluster.
"""

from __future__ import annotations

import argparse
import sys

from scanqueue import config
from scanqueue.cli import parsing


def add_commands(sub: parsing.Subparsers) -> None:
    p = sub.add_parser(
        "rbac",
        help="print the per-namespace RoleBindings and Roles of a cluster's watched "
        "namespaces (YAML for kubectl apply -f -)",
    )
    p.add_argument("--cluster", metavar="NAME", help="a configured cluster; default: the only one")
    p.set_defaults(command=_cmd_rbac)


def _cmd_rbac(args: argparse.Namespace) -> int:
    import yaml

    from scanqueue import errors, rbac

    settings = config.load()
    if args.cluster:
        cluster = settings.cluster(args.cluster)
    elif len(settings.clusters) == 1:
        (cluster,) = settings.clusters
    else:
        names = ", ".join(c.name for c in settings.clusters) or "none"
        raise errors.ConfigError(f"rbac: name a cluster with --cluster (configured: {names})")
    if not cluster.namespaces:
        print(
            f"# cluster {cluster.name} watches every namespace: the watcher binds cluster-wide; "
            "the worker needs deploy/22-rbac-team-a.yaml's Role in each namespace with "
            "private images",
            file=sys.stderr,
        )
    sys.stdout.write(yaml.safe_dump_all(rbac.documents(cluster), sort_keys=False))
    return 0
