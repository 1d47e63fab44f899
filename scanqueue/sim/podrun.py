"""The emulated kubelet runs a scan pod's containers for real: Trivy with the pod's own
command, arguments and environment, against the real registry and a DB the world wrote.

Why it exists: a scan Job is only proven by running it. A wrong flag, a renamed
``TRIVY_PASSWORD`` or a cache directory Trivy cannot use must fail a test, and a
finding must come from advisories, not from a recording.

How a pod runs here:

- every volume of the pod is a directory of its own under the pod's scratch
  directory; ``downwardAPI`` items are written from the pod's annotations and
  labels at start, as a kubelet does;
- **registry mode** (command ``trivy``, the aquasec/trivy image): the binary of
  the ``sim`` extra runs on the host; arguments and env values that name a
  path under a volume's mountPath are mapped to that volume's directory (no
  other path is touched);
- **node mode** (the target image itself, with a Trivy binary copied in by an
  init container): the node "has" the image: it is fetched once with skopeo
  (``World.node_auth`` plays the node's own credentials) and unpacked; each
  pod gets a hard-linked copy with its volumes inside, the init container's
  ``cp`` copies what the aquasec/trivy image holds (the binary, a CA bundle),
  and the scan container runs chrooted into that root, exactly as written,
  with the image config's ``Env`` under the container's env and its
  ``WorkingDir`` unless the container sets ``workingDir`` (as a runtime does:
  an image built to hide its CVEs gets its chance, tests/integration/
  test_sim_node_immunity.py);
- standalone scans find the DB in their cache directory, seeded by the world
  the way an init step would (not when the pod names ``--server`` or
  ``--db-repository``); ``World.start_server`` runs one ``trivy server`` per
  world for client/server mode.

What it must never do: pass the caller's environment or a credential anywhere
but the Trivy process's environment, log an environment, or let a scan outlive
its deadline (the process group is killed).
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from scanqueue.sim import kubelet, scanner, trivydb

Obj = dict[str, Any]

DEFAULT_ADVISORIES = Path(__file__).parent / "data" / "advisories.yaml"
HOST_CA_BUNDLES = ("/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt")
# What the aquasec/trivy image holds that an init container may copy out of it.
TRIVY_IMAGE_BINARY = "/usr/local/bin/trivy"
TRIVY_IMAGE_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"


class PodRunError(RuntimeError):
    """The pod cannot run as written (what a kubelet reports as a container error)."""


@dataclasses.dataclass(frozen=True)
class Mounts:
    """mountPath -> host directory, for one container."""

    paths: tuple[tuple[str, Path], ...]

    def map(self, value: str) -> str:
        """``value`` with each comma-separated path under a mountPath moved to its volume."""
        return ",".join(self._one(part) for part in value.split(","))

    def _one(self, path: str) -> str:
        for mount, local in sorted(self.paths, key=lambda p: -len(p[0])):
            if path == mount or path.startswith(mount.rstrip("/") + "/"):
                return str(local) + path[len(mount.rstrip("/")) :]
        return path


class World:
    """What the emulated nodes share: the DB, fetched images, a Trivy server, node credentials."""

    def __init__(self, directory: str | os.PathLike[str] | None = None) -> None:
        self._own = directory is None
        self.dir = Path(directory or tempfile.mkdtemp(prefix="sq-sim-world-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._first = threading.Lock()
        self._generation = 0
        self._db: Path | None = None
        self.advisories: trivydb.AdvisoryFile | None = None
        self.node_auth: dict[str, tuple[str, str]] = {}  # registry host -> (user, password)
        self.server: scanner.Server | None = None
        self._images: dict[str, Path] = {}
        self._image_locks: dict[str, threading.Lock] = {}

    # ----------------------------------------------------------------- DB

    def set_advisories(self, advisories: trivydb.AdvisoryFile | str | os.PathLike[str]) -> None:
        """The DB every scan from now on uses (a running Trivy server is restarted on it)."""
        if not isinstance(advisories, trivydb.AdvisoryFile):
            advisories = trivydb.load(advisories)
        with self._lock:
            self._generation += 1
            cache = self.dir / f"db-{self._generation}"
            trivydb.write_db(advisories, cache)
            self._db, self.advisories = cache / "db", advisories
            server = self.server
            if server is not None:  # same URL, new DB: the farm's config does not change
                server.stop()
                self.server = scanner.Server(cache, log=self.dir / "trivy-server.log")
                self.server.start(port=server.port)

    def db(self) -> Path:
        """The DB directory (``trivy.db``, ``metadata.json``); the bundled demo DB by default."""
        with self._first:
            if self._db is None:
                self.set_advisories(DEFAULT_ADVISORIES)
        assert self._db is not None
        return self._db

    def seed(self, cache_dir: Path) -> None:
        """Put the DB in ``cache_dir/db`` (Trivy reads, never writes it)."""
        source = self.db()
        target = cache_dir / "db"
        target.mkdir(parents=True, exist_ok=True)
        for name in ("trivy.db", "metadata.json"):
            shutil.copyfile(source / name, target / name)

    def start_server(self) -> str:
        """Start (once) a ``trivy server`` on this world's DB; return its URL."""
        db = self.db()
        with self._lock:
            if self.server is None:
                self.server = scanner.Server(db.parent, log=self.dir / "trivy-server.log").start()
            return self.server.url

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()
        if self._own:
            shutil.rmtree(self.dir, ignore_errors=True)

    # ------------------------------------------------------------- images

    def image_root(self, image: str) -> Path:
        """The unpacked filesystem of ``image`` (pinned by digest), fetched once per world.

        Raises ``PodRunError`` when the node cannot get it.
        """
        host, _, _, digest = kubelet.split_image(image)
        if not digest:
            raise PodRunError(f"image {image} is not pinned by digest")
        with self._lock:
            lock = self._image_locks.setdefault(digest, threading.Lock())
        with lock:
            if digest in self._images:
                return self._images[digest]
            root = self.dir / "images" / digest.replace(":", "-")
            _fetch(image, root, self.node_auth.get(host))
            self._images[digest] = root
            return root


def _fetch(image: str, root: Path, auth: tuple[str, str] | None) -> None:
    skopeo = shutil.which("skopeo")
    if skopeo is None:
        raise PodRunError("skopeo is not installed on the emulator host")
    layout = root.with_name(root.name + ".oci")
    shutil.rmtree(layout, ignore_errors=True)
    cmd = [skopeo, "copy", "--quiet", "--src-tls-verify=false"]
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(root.parent)}
    with tempfile.TemporaryDirectory(prefix="sq-sim-node-") as tmp:
        if auth:
            authfile = Path(tmp, "auth.json")
            pair = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
            host = kubelet.split_image(image)[0]
            fd = os.open(authfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump({"auths": {host: {"auth": pair}}}, f)
            cmd += ["--src-authfile", str(authfile)]
        cmd += [f"docker://{image}", f"oci:{layout}:image"]
        root.parent.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(
            cmd, capture_output=True, text=True, timeout=120, env=env, check=False
        )
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["unknown error"])[-1][:300]
        raise PodRunError(f"the node cannot pull {image}: {last}")
    _unpack(layout, root)
    shutil.rmtree(layout, ignore_errors=True)


def _unpack(layout: Path, root: Path) -> None:
    index = json.loads((layout / "index.json").read_text())
    manifest_digest = index["manifests"][0]["digest"]
    manifest = json.loads(_blob(layout, manifest_digest).read_text())
    # the image config's Env and WorkingDir, which a runtime applies to every container
    image_config = json.loads(_blob(layout, manifest["config"]["digest"]).read_text())
    runtime = {k: (image_config.get("config") or {}).get(k) for k in ("Env", "WorkingDir")}
    _config_path(root).write_text(json.dumps(runtime))
    tmp = root.with_name(root.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for layer in manifest.get("layers") or []:
        with tarfile.open(_blob(layout, layer["digest"]), "r:*") as tar:
            members = []
            for member in tar.getmembers():
                name = Path(member.name)
                if name.name.startswith(".wh."):  # whiteout: the lower layer's file is gone
                    gone = tmp / name.parent / name.name[4:]
                    if gone.is_dir():
                        shutil.rmtree(gone)
                    elif gone.exists():
                        gone.unlink()
                    continue
                if member.isdev():
                    continue
                members.append(member)
            tar.extractall(tmp, members=members, filter="tar")
    os.replace(tmp, root)


def _config_path(root: Path) -> Path:
    return root.with_name(root.name + ".config.json")


def image_runtime(root: Path) -> tuple[dict[str, str], str]:
    """The image's ``Env`` (as a dict) and ``WorkingDir`` of an unpacked image ``root``."""
    path = _config_path(root)
    runtime = json.loads(path.read_text()) if path.exists() else {}
    env = dict(str(e).split("=", 1) for e in runtime.get("Env") or [] if "=" in str(e))
    return env, str(runtime.get("WorkingDir") or "")


def _blob(layout: Path, digest: str) -> Path:
    algorithm, _, hexdigest = digest.partition(":")
    return layout / "blobs" / algorithm / hexdigest


# ------------------------------------------------------------------ the pod


Lookup = Callable[[str, str], "Obj | None"]  # (kind "ConfigMap"/"Secret", name) -> object


def _volumes(pod: Obj, pod_dir: Path, lookup: Lookup | None = None) -> dict[str, Path]:
    """Create each volume of ``pod`` (emptyDir, downwardAPI, configMap, secret items); return
    name -> directory. A missing ConfigMap or Secret that is not optional raises."""
    out: dict[str, Path] = {}
    meta = pod.get("metadata") or {}
    for volume in (pod.get("spec") or {}).get("volumes") or []:
        name = volume.get("name", "")
        local = pod_dir / "volumes" / name
        local.mkdir(parents=True, exist_ok=True)
        for kind, key in (("ConfigMap", "configMap"), ("Secret", "secret")):
            source = volume.get(key)
            if source is not None:
                _project(kind, source, local, lookup)
        for item in (volume.get("downwardAPI") or {}).get("items") or []:
            path = (item.get("fieldRef") or {}).get("fieldPath", "")
            value = ""
            for kind in ("annotations", "labels"):
                prefix = f"metadata.{kind}['"
                if path.startswith(prefix) and path.endswith("']"):
                    value = str((meta.get(kind) or {}).get(path[len(prefix) : -2], ""))
            (local / item.get("path", "item")).write_text(value)
        out[name] = local
    return out


def _project(kind: str, source: Mapping[str, Any], into: Path, lookup: Lookup | None) -> None:
    name = source.get("name") or source.get("secretName") or ""
    found = lookup(kind, name) if lookup is not None else None
    if found is None:
        if source.get("optional"):
            return
        raise PodRunError(f'{kind.lower()} "{name}" not found')
    data = dict(found.get("data") or {})
    items = source.get("items") or [{"key": k, "path": k} for k in data]
    for item in items:
        if item.get("key") not in data:
            raise PodRunError(f"{kind.lower()} {name} has no key {item.get('key')}")
        value = data[item["key"]]
        raw = base64.b64decode(value) if kind == "Secret" else str(value).encode()
        (into / item.get("path", item["key"])).write_bytes(raw)


def _container_mounts(container: Mapping[str, Any], volumes: Mapping[str, Path]) -> Mounts:
    """Host directories of the container's mounts (registry mode)."""
    paths: list[tuple[str, Path]] = []
    for mount in container.get("volumeMounts") or []:
        local = volumes.get(mount.get("name", ""))
        if local is None:
            raise PodRunError(f"volume {mount.get('name')!r} is not defined in the pod")
        paths.append((mount.get("mountPath", ""), local))
    return Mounts(tuple(paths))


def _program(command: Sequence[str], mounts: Mounts) -> str:
    if not command:
        raise PodRunError("the scan container has no command (the image's entrypoint is unknown)")
    if command[0] == "trivy" or command[0] == TRIVY_IMAGE_BINARY:
        return scanner.binary()
    mapped = mounts.map(command[0])
    if mapped == command[0]:
        raise PodRunError(f"{command[0]}: not found in the aquasec/trivy image")
    return mapped


def _cache_dir(args: Sequence[str], env: Mapping[str, str], home: Path) -> Path:
    for i, arg in enumerate(args):
        if arg == "--cache-dir" and i + 1 < len(args):
            return Path(args[i + 1])
        if arg.startswith("--cache-dir="):
            return Path(arg.split("=", 1)[1])
    if env.get("TRIVY_CACHE_DIR"):
        return Path(env["TRIVY_CACHE_DIR"])
    # Go's os.UserCacheDir, as Trivy uses it
    return Path(env.get("XDG_CACHE_HOME") or Path(env.get("HOME") or home) / ".cache") / "trivy"


def _needs_local_db(args: Sequence[str], env: Mapping[str, str]) -> bool:
    named = {a.split("=", 1)[0] for a in args}
    if "--server" in named or env.get("TRIVY_SERVER"):
        return False
    return not ("--db-repository" in named or env.get("TRIVY_DB_REPOSITORY"))


def run_registry(
    world: World,
    pod: Obj,
    *,
    container: Mapping[str, Any],
    env: Mapping[str, str],
    timeout: float,
    lookup: Lookup | None = None,
) -> kubelet.ContainerExit:
    """Run the registry-mode scan container (``trivy image ...``) on the host."""
    pod_dir = Path(tempfile.mkdtemp(prefix="pod-", dir=world.dir))
    try:
        mounts = _container_mounts(container, _volumes(pod, pod_dir, lookup))
        program = _program(list(container.get("command") or []), mounts)
        args = [mounts.map(str(a)) for a in container.get("args") or []]
        full_env = {k: mounts.map(v) for k, v in env.items()}
        home = pod_dir / "home"
        home.mkdir()
        if _needs_local_db(args, full_env):
            world.seed(_cache_dir(args, full_env, home))
        done = scanner.run(args, env=full_env, home=home, timeout=timeout, program=program)
    finally:
        shutil.rmtree(pod_dir, ignore_errors=True)
    target = str((container.get("args") or [""])[-1])
    digest = kubelet.split_image(target)[3]
    return kubelet.ContainerExit(done.exit_code, done.stdout + done.stderr, digest)


def run_node(
    world: World,
    pod: Obj,
    *,
    init: Sequence[Mapping[str, Any]],
    container: Mapping[str, Any],
    env: Mapping[str, str],
    timeout: float,
    lookup: Lookup | None = None,
) -> kubelet.ContainerExit:
    """Run node mode: init containers' ``cp`` out of the Trivy image, then the scan container
    chrooted into a copy of the target image's filesystem."""
    image = str(container.get("image", ""))
    digest = kubelet.split_image(image)[3]
    if os.geteuid() != 0:
        raise PodRunError("node mode runs the scan container with chroot: run the emulator as root")
    image_root = world.image_root(image)
    pod_dir = Path(tempfile.mkdtemp(prefix="pod-", dir=world.dir))
    try:
        root = pod_dir / "root"
        shutil.copytree(image_root, root, symlinks=True, copy_function=os.link)
        volumes = _volumes(pod, pod_dir, lookup)
        inside = _mount_into(root, volumes, [*init, container])
        for step in init:
            _run_copy(step, inside)
        args = [str(a) for a in container.get("args") or []]
        command = [str(c) for c in container.get("command") or []]
        if not command:
            raise PodRunError("the scan container has no command")
        # as a runtime does: the image's ENV under the container's env, the container's
        # workingDir or else the image's WORKDIR (so an image can try to configure its scan)
        image_env, image_workdir = image_runtime(image_root)
        env = {**image_env, **env}
        if _needs_local_db(args, env):
            cache = _cache_dir(args, env, Path("/"))  # HOME is / unless the pod sets it
            world.seed(Path(str(root) + str(cache)))
        workdir = str(container.get("workingDir") or image_workdir or "/")
        done = scanner.run(args, env=dict(env), timeout=timeout, program=command[0],
                           chroot=root, cwd=workdir)  # fmt: skip
    finally:
        shutil.rmtree(pod_dir, ignore_errors=True)
    return kubelet.ContainerExit(done.exit_code, done.stdout + done.stderr, digest)


def _mount_into(
    root: Path, volumes: Mapping[str, Path], containers: Sequence[Mapping[str, Any]]
) -> Mounts:
    """Make each mountPath a fresh directory inside ``root`` holding its volume's files (one
    directory per volume, shared by every container that mounts it)."""
    paths: list[tuple[str, Path]] = []
    for container in containers:
        for mount in container.get("volumeMounts") or []:
            name, path = mount.get("name", ""), mount.get("mountPath", "")
            if name not in volumes:
                raise PodRunError(f"volume {name!r} is not defined in the pod")
            inside = Path(str(root) + path)
            if (path, inside) in paths:
                continue
            if inside.is_symlink() or inside.is_file():
                inside.unlink()
            elif inside.is_dir():
                shutil.rmtree(inside)
            shutil.copytree(volumes[name], inside)
            paths.append((path, inside))
    return Mounts(tuple(paths))


def _run_copy(step: Mapping[str, Any], mounts: Mounts) -> None:
    """An init container copying files out of the aquasec/trivy image (``cp SRC... DEST``)."""
    command = [str(c) for c in [*(step.get("command") or []), *(step.get("args") or [])]]
    operands = [c for c in command[1:] if not c.startswith("-")]  # -v, -p: no effect here
    if not command or command[0] != "cp" or len(operands) < 2:
        raise PodRunError(f"init container {step.get('name')!r}: the emulator runs only cp")
    dest = Path(mounts.map(operands[-1]))
    for source in operands[:-1]:
        target = dest / Path(source).name if operands[-1].endswith("/") or dest.is_dir() else dest
        if source == TRIVY_IMAGE_BINARY:
            with contextlib.suppress(OSError):
                os.link(scanner.binary(), target)
            if not target.exists():
                shutil.copyfile(scanner.binary(), target)
            target.chmod(0o755)
        elif source == TRIVY_IMAGE_CA_BUNDLE:
            found = next((Path(p) for p in HOST_CA_BUNDLES if Path(p).is_file()), None)
            target.write_bytes(found.read_bytes() if found else b"")
        else:
            raise PodRunError(f"cp: cannot stat '{source}': No such file or directory")
