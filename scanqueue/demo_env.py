"""The embedded default of ``scanqueue run`` and ``scanqueue demo``: a demo world on loopback.

Why: a newcomer with no cluster and no configuration should see the whole farm
scan something real in one command. This module builds that something: a
private registry (Debian's ``docker-registry`` with htpasswd) and a public one
(no auth) on free loopback ports, the demo images pushed into them with
``skopeo``, the Kubernetes API emulator in this process loaded with the bundled
demo scenario (pull secrets holding the registry's credential, pods running
the pushed digests), and Redis/PostgreSQL of its own when none answers on the
default URLs.

What it must never do:
- run when the user has a configuration or a kubeconfig (``farm`` decides);
- listen anywhere but 127.0.0.1;
- print or log the registry password: it lives in the htpasswd file (bcrypt),
  in the emulator's pull secrets and in nothing else; ``World`` does not show it.

It lives outside ``scanqueue/sim/`` (another engineer owns the emulator) but
is demo-only too: production modules never import it. The servers themselves (registry,
Redis, PostgreSQL) are ``demo_services``; this module assembles the world from them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from scanqueue import config, demo_services

CLUSTER = "demo"  # the demo cluster's name, hence the queue scan.demo
SCAN_NAMESPACE = "scanqueue-scans"
REGISTRY_USER = "demo"
# repository:tag -> what goes into the image (distinct content, distinct digest)
PRIVATE_IMAGES = ("team-a/web:1.0", "payments/api:2.3", "team-b/reporter:5", "vendor/cache:7")
PUBLIC_IMAGE = "library/busybox:1.36"
# The packages each demo image carries, as Trivy finds them (imagefs.files arguments). The
# bundled DB (scanqueue/sim/data/advisories.yaml) has advisories for some of them: the demo
# report shows every severity but UNKNOWN, fixable and unfixable findings, and a clean image.
DEMO_IMAGES: dict[str, dict[str, Any]] = {
    "team-a/web:1.0": {
        "os_release": "alpine 3.19.1",
        "packages": ["libcrypto3 3.1.4-r5 openssl", "libssl3 3.1.4-r5 openssl",
                     "busybox 1.36.1-r15", "musl 1.2.4-r2", "zlib 1.3.1-r0"],
    },
    "payments/api:2.3": {
        "os_release": "debian 12.5",
        "packages": ["libssl3 3.0.11-1~deb12u2 openssl", "libc6 2.36-9+deb12u4 glibc",
                     "perl-base 5.36.0-7+deb12u1 perl", "zlib1g 1:1.2.13.dfsg-1 zlib",
                     "libuuid1 2.38.1-5+b1 util-linux", "mount 2.38.1-5+b1 util-linux",
                     "bash 5.2.15-2+b2"],
        "pip": ["requests 2.31.0", "urllib3 2.2.1", "jinja2 3.1.4", "idna 3.7"],
    },
    "team-b/reporter:5": {
        "os_release": "debian 12.5",
        "packages": ["libc6 2.36-9+deb12u10 glibc", "libblkid1 2.38.1-5+b1 util-linux",
                     "zlib1g 1:1.2.13.dfsg-1 zlib"],
    },
    "vendor/cache:7": {
        "os_release": "alpine 3.19.1",
        "packages": ["busybox 1.36.1-r15", "musl 1.2.4-r2", "zlib 1.3.1-r0"],
    },
    PUBLIC_IMAGE: {"os_release": "alpine 3.19.1", "packages": ["busybox 1.36.1-r29",
                                                               "musl 1.2.4-r3"]},
}  # fmt: skip


def _layer(content: str, packages: dict[str, Any] | None = None) -> bytes:
    """A reproducible tar layer: os-release, package metadata (``DEMO_IMAGES`` entry) and
    one file with ``content``."""
    from scanqueue.sim import imagefs  # the demo side, like the emulator it starts

    files = imagefs.files(**(packages or {"os_release": "alpine 3.19.1"}))
    files["etc/scanqueue-demo"] = (content + "\n").encode()
    return imagefs.layer(files)


@dataclasses.dataclass
class World:
    """Everything the embedded default started; ``stop()`` ends it all."""

    directory: Path
    settings_path: Path
    kubeconfig: Path
    registry: demo_services.Registry
    public: demo_services.Registry
    redis_url: str
    database_url: str
    digests: dict[str, str]  # image reference as the pods name it -> digest
    emulator: Any = dataclasses.field(repr=False)
    services: list[Any] = dataclasses.field(default_factory=list, repr=False)

    def stop(self) -> None:
        """Stop the emulator, the registries and any Redis/Postgres started here."""
        with contextlib.suppress(Exception):
            self.emulator.stop()
        for service in reversed(self.services):
            with contextlib.suppress(Exception):
                service.stop()


def write_settings(
    path: Path,
    *,
    database_url: str,
    redis_url: str,
    kubeconfig: Path,
    insecure: list[str],
    trivy_server: str = "",
) -> Path:
    """The demo's scanqueue.toml: one cluster, plain-http loopback registries, brisk timings,
    scans in client/server mode against ``trivy_server`` when given."""
    insecure_list = ", ".join(f'"{h}"' for h in insecure)
    path.write_text(
        "# written by scanqueue run/demo for the embedded default; removed when it stops\n"
        f'[database]\nurl = "{database_url}"\n\n'
        f'[broker]\nurl = "{redis_url}"\n\n'
        "[scan]\n"
        "job_deadline_seconds = 120\n"
        "soft_time_limit_seconds = 150\n"
        "hard_time_limit_seconds = 180\n"
        "collect_interval_seconds = 1.0\n"
        "sweep_interval_seconds = 30.0\n"
        f"insecure_registries = [{insecure_list}]\n\n"
        "[[clusters]]\n"
        f'name = "{CLUSTER}"\n'
        f'kubeconfig = "{kubeconfig}"\n'
        f'scan_namespace = "{SCAN_NAMESPACE}"\n'
        + (f'trivy_server = "{trivy_server}"\n' if trivy_server else "")
    )
    path.chmod(0o600)
    config.load(path, environ={})  # what we wrote must be valid settings
    return path


# shape: one try block, so that whatever started before a failure is stopped in its except;
# the steps are calls (redis_and_postgres, Registry, _push, Emulator, scenario, write_settings)
def start(
    directory: Path,
    *,
    settings: config.Settings,
    private_services: bool = False,
    say: Any = print,
) -> World:
    """Start the demo world in ``directory``; ``say(line)`` reports each step.

    Redis and Postgres: the ones of ``settings`` when they answer; when they do
    not and the URLs are the defaults, private ones in ``directory``; when the
    URLs were set explicitly (``SCANQUEUE_*``), their failure is an error.
    ``private_services``: always private ones, whatever answers.
    Raises ``demo_services.DemoError`` (or ``TemporaryError`` for an explicit URL that does
    not answer); whatever started before the failure is stopped.
    """
    from scanqueue.sim import emulator as emulator_mod
    from scanqueue.sim import scenario

    started: list[Any] = []
    try:
        redis_url, database_url = demo_services.redis_and_postgres(
            directory, settings, started, say, private=private_services
        )
        registry = demo_services.Registry(
            directory / "registry", user=REGISTRY_USER, password=secrets.token_urlsafe(18)
        ).start()
        started.append(registry)
        public = demo_services.Registry(directory / "public-registry").start()
        started.append(public)
        say(f"  registry     {registry.host} (htpasswd, user {REGISTRY_USER}) and a public one "
            f"on {public.host}")  # fmt: skip
        digests = {
            **_push(registry, PRIVATE_IMAGES),
            **_push(public, (PUBLIC_IMAGE,)),
        }
        say(f"  images       {len(digests)} pushed with skopeo")
        emulator = emulator_mod.Emulator(name=CLUSTER, trivy_dir=directory / "trivy")
        emulator.start()
        started.append(emulator)
        # the nodes' own login to the private registry (node mode pulls no Secret), and one
        # Trivy server on the bundled DB for the farm's client/server scans
        emulator.trivy.node_auth[registry.host] = (registry.user, registry.password)
        trivy_server = emulator.trivy_server()
        say(f"  trivy        {trivy_server} (trivy server, the bundled offline DB)")
        loaded = scenario.load(
            variables={
                "REGISTRY": registry.host,
                "REGISTRY_USER": registry.user,
                "REGISTRY_PASSWORD": registry.password,
                "PUBLIC_IMAGE": f"{public.host}/{PUBLIC_IMAGE}",
            }
        )
        applied = scenario.apply(emulator, loaded, digests=digests, resolve=False)
        kubeconfig = emulator.kubeconfig(directory / "kubeconfig")
        say(f"  cluster      {CLUSTER}: the bundled demo scenario on the Kubernetes API emulator "
            f"at {emulator.url} ({len(applied.pods)} pods)")  # fmt: skip
        settings_path = write_settings(
            directory / "scanqueue.toml",
            database_url=database_url,
            redis_url=redis_url,
            kubeconfig=kubeconfig,
            insecure=[registry.host, public.host],
            trivy_server=trivy_server,
        )
        return World(
            directory=directory,
            settings_path=settings_path,
            kubeconfig=kubeconfig,
            registry=registry,
            public=public,
            redis_url=redis_url,
            database_url=database_url,
            digests=dict(applied.digests),
            emulator=emulator,
            services=[s for s in started if s is not emulator],
        )
    except BaseException:
        for service in reversed(started):
            with contextlib.suppress(Exception):
                service.stop()
        raise


def _push(registry: demo_services.Registry, images: tuple[str, ...]) -> dict[str, str]:
    """Push each demo image (``repository:tag``) with its packages; reference -> digest."""
    digests: dict[str, str] = {}
    for image in images:
        repository, tag = image.split(":")
        layer = _layer(f"scanqueue demo {image}", DEMO_IMAGES.get(image))
        digests[f"{registry.host}/{image}"] = registry.push(repository, tag, layer=layer)
    return digests


def environment(world: World) -> Mapping[str, str]:
    """What the farm's processes need in their environment to use the demo world."""
    return {"SCANQUEUE_CONFIG": str(world.settings_path)}
