"""``scanqueue credentials match`` and ``registry resolve``: pull secrets, offline and live.

Both read pull-secret JSON files given on the command line with one reader. They must never
print a password, token or ``auth`` value: only sources, registry keys and user names.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from scanqueue import config, errors
from scanqueue.cli import parsing

if TYPE_CHECKING:
    from scanqueue import credentials


def add_commands(sub: parsing.Subparsers) -> None:
    _add_credentials_commands(sub)
    _add_registry_commands(sub)


def _add_credentials_commands(sub: parsing.Subparsers) -> None:
    group = sub.add_parser(
        "credentials", help="pull-secret credentials: which ones the kubelet would try"
    )
    group.set_defaults(command=lambda _args: parsing.print_help(group))
    commands = group.add_subparsers(title="credentials commands", metavar="COMMAND")
    p = commands.add_parser(
        "match",
        help="list the credentials matching IMAGE, in the order the kubelet tries them",
        description=(
            "Read each FILE as the JSON of a pull secret (.dockerconfigjson or legacy "
            ".dockercfg, detected) and print, as a JSON list in kubelet order, the "
            "source, normalised registry key and username of every matching credential. "
            "Passwords and tokens are never printed."
        ),
    )
    p.add_argument("image", metavar="IMAGE", help="image reference, e.g. r.example.com/app:1")
    p.add_argument(
        "--dockerconfig",
        action="append",
        required=True,
        metavar="FILE",
        help="a pull secret's JSON content (repeatable; order = the pod's imagePullSecrets order)",
    )
    p.set_defaults(command=_cmd_credentials_match)


def _read_dockerconfigs(paths: list[str]) -> list[list[credentials.Credential]]:
    """One keyring per pull-secret JSON file, in order; ``PermanentError`` naming a bad file."""
    from pathlib import Path

    from scanqueue import credentials

    keyrings = []
    for path in paths:
        try:
            content = Path(path).read_bytes()
        except OSError as e:
            raise errors.PermanentError(
                f"cannot read docker config file {path}: {e.strerror or type(e).__name__}"
            ) from e
        keyrings.append(credentials.parse_dockerconfig(content, source=path))
    return keyrings


def _cmd_credentials_match(args: argparse.Namespace) -> int:
    import json

    from scanqueue import credentials, images

    image = images.parse(args.image)
    keyrings = _read_dockerconfigs(args.dockerconfig)
    found = credentials.candidates(image, keyrings)
    rows = [{"source": c.source, "registry": c.registry, "username": c.username} for c in found]
    print(json.dumps(rows, indent=2))
    return 0


def _add_registry_commands(sub: parsing.Subparsers) -> None:
    group = sub.add_parser("registry", help="ask an OCI registry: accepted credential, digest")
    group.set_defaults(command=lambda _args: parsing.print_help(group))
    commands = group.add_subparsers(title="registry commands", metavar="COMMAND")
    p = commands.add_parser(
        "resolve",
        help="resolve IMAGE to its digest with the first credential the registry accepts",
        description=(
            "Try the credentials matching IMAGE from each FILE (pull-secret JSON, in kubelet "
            "order) one at a time against the registry, then anonymous with --anonymous. "
            "Print {image, digest, credential} as JSON and exit 0; when no candidate is "
            "accepted print every candidate's answer and exit 3. Never prints a secret."
        ),
    )
    p.add_argument("image", metavar="IMAGE", help="image reference, e.g. r.example.com/app:1")
    p.add_argument(
        "--dockerconfig",
        action="append",
        default=[],
        metavar="FILE",
        help="a pull secret's JSON content (repeatable; order = the pod's imagePullSecrets order)",
    )
    p.add_argument(
        "--insecure-registry",
        action="append",
        default=[],
        metavar="HOST[:PORT]",
        help="reach this registry over plain http (repeatable; adds to scan.insecure_registries)",
    )
    p.add_argument(
        "--anonymous",
        action="store_true",
        help="try an anonymous pull after the credentials (default: credentials only)",
    )
    p.add_argument("--ca-bundle", metavar="FILE", help="CA bundle for registry TLS")
    p.set_defaults(command=_cmd_registry_resolve)


def _cmd_registry_resolve(args: argparse.Namespace) -> int:
    import dataclasses
    import json

    from scanqueue import credentials, images, registry

    image = images.parse(args.image)
    keyrings = _read_dockerconfigs(args.dockerconfig)
    candidates = credentials.candidates(image, keyrings)
    scan = config.load().scan
    settings = dataclasses.replace(
        scan,
        allow_anonymous=args.anonymous,
        insecure_registries=(*scan.insecure_registries, *args.insecure_registry),
        registry_ca_bundle=args.ca_bundle or scan.registry_ca_bundle,
    )
    try:
        with registry.Client(settings=settings) as client:
            resolution = client.resolve(image, candidates)
    except (registry.NoCredentialAccepted, registry.RegistryUnavailable) as e:
        refusals = [r.as_dict() for r in e.refusals]
        print(json.dumps({"image": str(image), "digest": None, "credential": None,
                          "refusals": refusals}, indent=2))  # fmt: skip
        print(f"scanqueue: no credential accepted for {image}", file=sys.stderr)
        for refusal in e.refusals:
            print(f"  - {refusal}", file=sys.stderr)
        if not e.refusals:
            print(f"  {e}", file=sys.stderr)
        if isinstance(e, registry.RegistryUnavailable):
            print("  (the registry did not answer for every candidate; try again)", file=sys.stderr)
        return 3
    accepted = resolution.credential
    print(json.dumps({
        "image": str(image),
        "digest": resolution.digest,
        "credential": None if accepted is None else {
            "source": accepted.source, "registry": accepted.registry,
            "username": accepted.username,
        },
    }, indent=2))  # fmt: skip
    return 0
