#!/usr/bin/env bash
# Install the Debian packages scanqueue's tests and farm need, only when missing.
# Usage: scripts/ensure-system.sh            packages only (what `make test` needs)
#        scripts/ensure-system.sh --services also start Redis on 6379 and PostgreSQL on 5432
#                                            when not running (what `make run` needs)
set -euo pipefail

need=()
have() { command -v "$1" >/dev/null 2>&1; }
have redis-server || need+=(redis-server)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
have docker-registry || need+=(docker-registry)
have skopeo || need+=(skopeo)
have htpasswd || need+=(apache2-utils)
have runuser || need+=(util-linux)
python3 -c 'import ensurepip' >/dev/null 2>&1 || need+=(python3-venv)
have chromium || need+=(chromium)  # the HTML report's browser test (headless)

if [ ${#need[@]} -gt 0 ]; then
  echo "scanqueue: installing Debian packages: ${need[*]}"
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then
    have sudo || { echo "scanqueue: need root (or sudo) to install ${need[*]}" >&2; exit 1; }
    SUDO="sudo"
  fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  # policy-rc.d keeps package scripts from starting services we start ourselves
  $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

if [ "${1:-}" = "--services" ]; then
  if ! (exec 3<>/dev/tcp/127.0.0.1/6379) 2>/dev/null; then
    echo "scanqueue: starting redis-server on 127.0.0.1:6379"
    mkdir -p /var/lib/redis /var/log/redis 2>/dev/null || true
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
      --dir /tmp --logfile /tmp/scanqueue-redis.log
  fi
  if ! (exec 3<>/dev/tcp/127.0.0.1/5432) 2>/dev/null; then
    version=$(ls /etc/postgresql 2>/dev/null | sort -n | tail -1)
    if [ -n "$version" ]; then
      echo "scanqueue: starting PostgreSQL $version on 127.0.0.1:5432"
      pg_ctlcluster --skip-systemctl-redirect "$version" main start
    else
      echo "scanqueue: no PostgreSQL cluster in /etc/postgresql; create one with pg_createcluster" >&2
      exit 1
    fi
  fi
fi
