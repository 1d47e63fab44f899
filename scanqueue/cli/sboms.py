"""``scanqueue sbom DIGEST``: the stored package list of a digest, as CycloneDX JSON.

For other tools (Dependency-Track and the like): the document the farm's
rescans evaluate, exactly as kept from the digest's first full scan with
rescans on (docs/rescans.md). It prints package lists only, never a credential.
"""

from __future__ import annotations

import argparse
import sys

from scanqueue import config, errors
from scanqueue.cli import parsing


def add_commands(sub: parsing.Subparsers) -> None:
    p = sub.add_parser(
        "sbom",
        help="print the stored SBOM (CycloneDX JSON) of an image digest",
        description="Print the package list kept for DIGEST (CycloneDX JSON, as `trivy convert "
        "--format cyclonedx` wrote it from the digest's first full scan). Exit 2 when none is "
        "stored or it cannot be read.",
    )
    p.add_argument("digest", metavar="DIGEST", help="sha256:<64 hex>, or REPOSITORY@sha256:...")
    p.add_argument("--output", "-o", metavar="FILE", help="write to FILE instead of stdout")
    p.set_defaults(command=_cmd_sbom)


def _cmd_sbom(args: argparse.Namespace) -> int:
    from scanqueue import sboms, store
    from scanqueue.store import sboms as stored_sboms

    digest = str(args.digest).rpartition("@")[2]
    if not digest.startswith("sha256:") or len(digest) != 71:
        raise errors.PermanentError(f"sbom: {args.digest!r} is not a digest; pass sha256:<64 hex>")
    settings = config.load()
    with store.connect(
        settings.database.url, password=config.database_password(settings.database)
    ) as conn:
        stored = stored_sboms.get(conn, digest)
    if stored is None:
        raise errors.PermanentError(
            f"sbom: no SBOM stored for {digest}; SBOMs are kept by full scans with "
            "rescan.enabled = true (an image scanned before, or whose report listed no "
            "packages, has none until its next full scan)"
        )
    document = sboms.unpack(stored.document, digest=digest)
    if args.output:
        with open(args.output, "wb") as out:
            out.write(document)
    else:
        sys.stdout.buffer.write(document)
        sys.stdout.buffer.flush()
    return 0
