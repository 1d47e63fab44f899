"""``scanqueue sim serve``: the Kubernetes API emulator on its own (tests and demo only).

The emulator is imported inside the command, so production paths never load it.
"""

from __future__ import annotations

import argparse

from scanqueue import errors
from scanqueue.cli import parsing, serving


def add_commands(sub: parsing.Subparsers) -> None:
    _add_sim_commands(sub)


def _add_sim_commands(sub: parsing.Subparsers) -> None:
    group = sub.add_parser("sim", help="the Kubernetes API emulator used by the tests and the demo")
    group.set_defaults(command=lambda _args: parsing.print_help(group))
    commands = group.add_subparsers(title="sim commands", metavar="COMMAND")
    p = commands.add_parser(
        "serve",
        help="run the emulator until interrupted",
        description=(
            "Run the Kubernetes API emulator (API server, Job controller, kubelet for scan "
            "pods) on HOST:PORT, optionally loaded with a scenario, and print one line of "
            'JSON: {"url": ..., "kubeconfig": ..., "pods": N, "unresolved": [...]}.'
        ),
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=0, help="port; 0 (default) picks a free one")
    p.add_argument(
        "--scenario", metavar="FILE", help="scenario YAML to load; 'demo' for the bundled demo"
    )
    p.add_argument(
        "--var",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="fill ${NAME} in the scenario (repeatable)",
    )
    p.add_argument("--kube-version", default="1.30", help="schemas to validate with (1.25-1.37)")
    p.add_argument("--kubeconfig-out", metavar="FILE", help="write a kubeconfig for the emulator")
    p.add_argument(
        "--no-pull", action="store_true", help="scan pods succeed without pulling (benchmarks)"
    )
    p.set_defaults(command=_cmd_sim_serve)


def _cmd_sim_serve(args: argparse.Namespace) -> int:
    import json

    from scanqueue.sim import emulator, scenario

    variables: dict[str, str] = {}
    for item in args.var:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise errors.PermanentError(f"--var {item!r}: expected NAME=VALUE")
        variables[name] = value
    loaded = None
    if args.scenario:
        path = None if args.scenario == "demo" else args.scenario
        loaded = scenario.load(path, variables=variables)
    emu = emulator.Emulator(
        host=args.host, port=args.port, kube_version=args.kube_version, real_pull=not args.no_pull
    )

    def start() -> str:
        emu.start()
        applied = scenario.apply(emu, loaded) if loaded is not None else None
        kubeconfig = str(emu.kubeconfig(args.kubeconfig_out)) if args.kubeconfig_out else None
        line = {
            "url": emu.url,
            "kubeconfig": kubeconfig,
            "scenario": loaded.source if loaded is not None else None,
            "pods": len(applied.pods) if applied is not None else 0,
            "unresolved": applied.unresolved if applied is not None else [],
        }
        return json.dumps(line)

    return serving.serve_until_signal(start, emu.stop)
