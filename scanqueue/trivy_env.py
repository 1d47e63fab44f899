"""The environment variables a node-mode scan must not inherit from the scanned image.

Why it exists: in node mode the scan container *is* the target image, so the
image's ``ENV`` is the container's environment. Trivy reads one ``TRIVY_*``
variable per flag (``--severity`` <- ``TRIVY_SEVERITY``, ``--ignorefile`` <-
``TRIVY_IGNOREFILE``...), and Go's HTTP and TLS code reads the proxy and CA
variables, so an image could hide its own findings or redirect Trivy's
traffic. ``manifests`` sets every name listed here (to our value, or empty:
Trivy and Go treat an empty variable as unset). A unit test checks the list
against the flags of the real Trivy binary.

What it must never do: hold a value that depends on the scanned image, or
any I/O. Constants only.
"""

from __future__ import annotations

# Variables of the target image that would change what Trivy trusts, where it
# writes or how it connects; set to ours (or empty: unset for Go and for Trivy).
IMAGE_ENV_OVERRIDDEN = (
    "HOME",
    "TMPDIR",
    "XDG_CACHE_HOME",
    "XDG_CONFIG_HOME",
    "XDG_DATA_HOME",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "HTTPS_PROXY",
    "https_proxy",
    "HTTP_PROXY",
    "http_proxy",
    "NO_PROXY",
    "no_proxy",
    "ALL_PROXY",
    "all_proxy",
    "GODEBUG",
    "GOFLAGS",
    "LD_PRELOAD",
    "LD_LIBRARY_PATH",
    "DOCKER_CONFIG",
    "DOCKER_HOST",
    "REGISTRY_AUTH_FILE",
)
# Every TRIVY_* variable the Trivy CLI reads (one per flag of `trivy rootfs --help`, 0.57 to
# 0.76); empty counts as unset, so none of the image's values survives.
TRIVY_ENV_BLANKED = tuple(
    "TRIVY_" + flag.upper().replace("-", "_")
    for flag in """
    cache-backend cache-dir cache-ttl checks-bundle-repository clear-cache compliance config
    config-check config-data config-file-schemas custom-headers db-repository debug
    dependency-tree detection-priority disable-telemetry distro download-db-only
    download-java-db-only enable-modules exit-code exit-on-eol file-patterns format
    generate-default-config helm-api-versions helm-kube-version helm-set helm-set-file
    helm-set-string helm-values ignore-policy ignore-status ignore-unfixed ignored-licenses
    ignorefile include-deprecated-checks include-dev-deps include-non-failures insecure
    java-db-repository license-confidence-level license-full list-all-pkgs module-dir no-color
    no-progress offline-scan output output-plugin-arg parallel password password-stdin
    pkg-relationships pkg-types quiet redis-ca redis-cert redis-key redis-tls registry-token
    rekor-url report sbom-sources scanners secret-config server severity show-suppressed
    skip-check-update skip-db-update skip-dirs skip-files skip-java-db-update
    skip-policy-update skip-vex-repo-update template timeout tf-exclude-downloaded-modules
    tf-vars token token-header trace username vex vuln-type non-ssl skip-version-check
    ansible-extra-vars ansible-inventory ansible-playbook cacert cf-params check-namespaces
    misconfig-scanners raw-config-scanners rego-error-limit render-cause table-mode trace-rego
    version vuln-severity-source
    """.split()  # noqa: SIM905
)
