"""The Pod Security Standards (baseline and restricted, version "latest") as a checker.

Why it exists: a namespace's ``pod-security.kubernetes.io/enforce`` label makes
kube-apiserver refuse pods that break its level, and the emulator does not
implement that admission plug-in. ``violations(pod_spec, level)`` applies the
same rules (https://kubernetes.io/docs/concepts/security/pod-security-standards/)
to a pod spec (or a pod template's spec), so tests can prove that every pod we
build or ship is admitted where it is meant to run, and that the scan namespace
is not left at ``privileged``.

It checks the pod spec only (plus the AppArmor annotations when given the
pod's metadata); it never talks to a cluster.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

LEVELS = ("privileged", "baseline", "restricted")

BASELINE_CAPABILITIES = frozenset(
    {
        "AUDIT_WRITE",
        "CHOWN",
        "DAC_OVERRIDE",
        "FOWNER",
        "FSETID",
        "KILL",
        "MKNOD",
        "NET_BIND_SERVICE",
        "SETFCAP",
        "SETGID",
        "SETPCAP",
        "SETUID",
        "SYS_CHROOT",
    }
)
SAFE_SYSCTLS = frozenset(
    {
        "kernel.shm_rmid_forced",
        "net.ipv4.ip_local_port_range",
        "net.ipv4.ip_unprivileged_port_start",
        "net.ipv4.tcp_syncookies",
        "net.ipv4.ping_group_range",
        "net.ipv4.ip_local_reserved_ports",
        "net.ipv4.tcp_keepalive_time",
        "net.ipv4.tcp_fin_timeout",
        "net.ipv4.tcp_keepalive_intvl",
        "net.ipv4.tcp_keepalive_probes",
    }
)
SELINUX_TYPES = frozenset(
    {"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}
)
RESTRICTED_VOLUMES = frozenset(
    {
        "configMap",
        "csi",
        "downwardAPI",
        "emptyDir",
        "ephemeral",
        "persistentVolumeClaim",
        "projected",
        "secret",
    }
)
_VOLUME_META = frozenset({"name"})


def level_of(namespace: Mapping[str, Any]) -> str:
    """The level a Namespace object enforces (no label: ``privileged``)."""
    labels = (namespace.get("metadata") or {}).get("labels") or {}
    level = str(labels.get("pod-security.kubernetes.io/enforce", "privileged"))
    if level not in LEVELS:
        raise ValueError(f"namespace enforces unknown level {level!r}")
    return level


def violations(
    pod: Mapping[str, Any], level: str, *, metadata: Mapping[str, Any] | None = None
) -> list[str]:
    """Every rule of ``level`` that the pod spec ``pod`` breaks, as readable lines."""
    if level not in LEVELS:
        raise ValueError(f"unknown level {level!r}; expected one of {LEVELS}")
    if level == "privileged":
        return []
    out = list(_baseline(pod, metadata or {}))
    if level == "restricted":
        out += list(_restricted(pod))
    return out


def _containers(pod: Mapping[str, Any]) -> Iterator[tuple[str, Mapping[str, Any]]]:
    for field in ("initContainers", "containers", "ephemeralContainers"):
        for c in pod.get(field) or []:
            yield f"{field}[{c.get('name', '?')}]", c


def _baseline(pod: Mapping[str, Any], metadata: Mapping[str, Any]) -> Iterator[str]:
    pod_sc = pod.get("securityContext") or {}
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(field):
            yield f"host namespaces: {field} = true"
    if (pod_sc.get("windowsOptions") or {}).get("hostProcess"):
        yield "hostProcess: pod windowsOptions.hostProcess = true"
    for volume in pod.get("volumes") or []:
        if "hostPath" in volume:
            yield f"hostPath volumes: volume {volume.get('name')}"
    yield from _seccomp_baseline("pod", pod_sc)
    yield from _selinux("pod", pod_sc)
    yield from _apparmor("pod", pod_sc)
    for name in metadata.get("annotations") or {}:
        if name.startswith("container.apparmor.security.beta.kubernetes.io/"):
            value = metadata["annotations"][name]
            if value != "runtime/default" and not value.startswith("localhost/"):
                yield f"AppArmor: annotation {name} = {value}"
    for sysctl in pod_sc.get("sysctls") or []:
        if sysctl.get("name") not in SAFE_SYSCTLS:
            yield f"sysctls: {sysctl.get('name')} is not in the safe set"
    for where, c in _containers(pod):
        sc = c.get("securityContext") or {}
        if sc.get("privileged"):
            yield f"privileged: {where}"
        if (sc.get("windowsOptions") or {}).get("hostProcess"):
            yield f"hostProcess: {where}"
        added = set((sc.get("capabilities") or {}).get("add") or [])
        extra = sorted(added - BASELINE_CAPABILITIES)
        if extra:
            yield f"capabilities: {where} adds {', '.join(extra)}"
        for port in c.get("ports") or []:
            if port.get("hostPort"):
                yield f"host ports: {where} uses hostPort {port['hostPort']}"
        if sc.get("procMount") not in (None, "Default"):
            yield f"/proc mount type: {where} uses {sc['procMount']}"
        yield from _seccomp_baseline(where, sc)
        yield from _selinux(where, sc)
        yield from _apparmor(where, sc)


def _seccomp_baseline(where: str, sc: Mapping[str, Any]) -> Iterator[str]:
    if (sc.get("seccompProfile") or {}).get("type") == "Unconfined":
        yield f"seccomp: {where} is Unconfined"


def _selinux(where: str, sc: Mapping[str, Any]) -> Iterator[str]:
    options = sc.get("seLinuxOptions") or {}
    if options.get("type", "") not in SELINUX_TYPES:
        yield f"SELinux: {where} type {options['type']}"
    for field in ("user", "role"):
        if options.get(field):
            yield f"SELinux: {where} sets {field}"


def _apparmor(where: str, sc: Mapping[str, Any]) -> Iterator[str]:
    kind = (sc.get("appArmorProfile") or {}).get("type")
    if kind not in (None, "RuntimeDefault", "Localhost"):
        yield f"AppArmor: {where} profile {kind}"


def _restricted(pod: Mapping[str, Any]) -> Iterator[str]:
    pod_sc = pod.get("securityContext") or {}
    for volume in pod.get("volumes") or []:
        kinds = set(volume) - _VOLUME_META
        if not kinds <= RESTRICTED_VOLUMES:
            yield f"volume types: volume {volume.get('name')} is {', '.join(sorted(kinds))}"
    pod_non_root = pod_sc.get("runAsNonRoot")
    pod_seccomp = (pod_sc.get("seccompProfile") or {}).get("type")
    if pod_sc.get("runAsUser") == 0:
        yield "running as non-root user: pod runAsUser = 0"
    for where, c in _containers(pod):
        sc = c.get("securityContext") or {}
        if sc.get("allowPrivilegeEscalation") is not False:
            yield f"privilege escalation: {where} does not set allowPrivilegeEscalation: false"
        non_root = sc.get("runAsNonRoot", pod_non_root)
        if non_root is not True:
            yield f"running as non-root: {where} runAsNonRoot is not true"
        if sc.get("runAsUser") == 0:
            yield f"running as non-root user: {where} runAsUser = 0"
        seccomp = (sc.get("seccompProfile") or {}).get("type", pod_seccomp)
        if seccomp not in ("RuntimeDefault", "Localhost"):
            yield f"seccomp: {where} has no RuntimeDefault or Localhost profile"
        capabilities = sc.get("capabilities") or {}
        if "ALL" not in (capabilities.get("drop") or []):
            yield f"capabilities: {where} does not drop ALL"
        extra = sorted(set(capabilities.get("add") or []) - {"NET_BIND_SERVICE"})
        if extra:
            yield f"capabilities: {where} adds {', '.join(extra)} (restricted allows none)"
