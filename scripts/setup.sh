#!/usr/bin/env bash
# Idempotent environment setup for tradeops.remediation (called by `make setup`).
#  1. Debian packages the lab, the tests and the drills need. Installed when run as root on
#     Debian; otherwise the exact command to run is printed and setup stops.
#  2. A virtualenv (.venv) with the tradeops package and its dev extras (ansible-core, the
#     `ansible` package with the community collections, ansible-runner, molecule, ...).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
DEB_PACKAGES=(postgresql postgresql-contrib pgbouncer redis-server docker.io debootstrap iproute2
  # the closed loop (issue 19): monitoring, and the Java 17 runtime ansible-rulebook's Drools engine needs
  prometheus prometheus-alertmanager prometheus-postgres-exporter prometheus-redis-exporter openjdk-17-jre-headless)
# Node runs Mermaid's own parser for the tests of the post-mortem draft (tests/js): Debian's nodejs and npm,
# unless a node with npm is already installed (a NodeSource nodejs ships its own npm and conflicts with Debian's).
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  DEB_PACKAGES+=(nodejs npm)
fi

missing=()
if command -v dpkg-query >/dev/null 2>&1; then
  for p in "${DEB_PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
      missing+=("$p")
    fi
  done
fi
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q || echo "setup: apt-get update failed; trying the install with the current package lists"
    apt-get install -y -q --no-install-recommends "${missing[@]}"
  else
    echo "setup: missing Debian packages: ${missing[*]}" >&2
    echo "setup: run this as root, then re-run make:" >&2
    echo "    sudo apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
fi

# Docker, for the Molecule drills (molecule/, tests/molecule): start dockerd in the background
# when it is not running. The drills fail (never skip) without it, so setup fails here, naming
# the problem, unless TRADEOPS_NO_DOCKER=1 says this machine does not run them.
docker_ok() { timeout 10 docker info >/dev/null 2>&1; }
if [ "${TRADEOPS_NO_DOCKER:-0}" != "1" ] && ! docker_ok; then
  dockerd_log=${TRADEOPS_DOCKERD_LOG:-/var/log/tradeops-dockerd.log}
  if ! command -v dockerd >/dev/null 2>&1; then
    echo "setup: dockerd is not installed (apt-get install -y docker.io); set TRADEOPS_NO_DOCKER=1 to skip Docker" >&2
    exit 1
  elif [ "$(id -u)" -ne 0 ]; then
    echo "setup: Docker is not running and only root can start it here: sudo dockerd >$dockerd_log 2>&1 &" >&2
    echo "setup: (or set TRADEOPS_NO_DOCKER=1 on a machine that does not run the Molecule drills)" >&2
    exit 1
  fi
  if pgrep -x dockerd >/dev/null 2>&1; then
    echo "setup: dockerd is running but not answering yet; waiting"
  else
    echo "setup: starting dockerd in the background (log: $dockerd_log)"
    # its own session, so it outlives this make / CI step
    setsid dockerd >>"$dockerd_log" 2>&1 </dev/null &
  fi
  for _ in $(seq 1 30); do
    docker_ok && break
    sleep 1
  done
  if ! docker_ok; then
    echo "setup: ERROR: Docker did not come up within 30 s; the last lines of $dockerd_log:" >&2
    tail -n 20 "$dockerd_log" >&2 2>/dev/null || true
    echo "setup: the Molecule drills need a running dockerd (set TRADEOPS_NO_DOCKER=1 to skip Docker)" >&2
    exit 1
  fi
  echo "setup: Docker is up"
fi

# Python >= 3.11 for the virtualenv.
PYTHON=${PYTHON:-}
if [ -z "$PYTHON" ]; then
  for cand in python3.13 python3.12 python3.11 python3; do
    if command -v "$cand" >/dev/null 2>&1 && "$cand" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
      PYTHON=$(command -v "$cand"); break
    fi
  done
fi
if [ -z "$PYTHON" ]; then
  echo "setup: Python >= 3.11 is required (apt-get install -y python3 python3-venv)" >&2
  exit 1
fi

stamp="$VENV/.tradeops-setup"
want=$(cat pyproject.toml | sha256sum | cut -c1-16)
if [ -x "$VENV/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo "setup: $VENV is up to date"
else
  if [ ! -x "$VENV/bin/python" ]; then
    echo "setup: creating $VENV with $PYTHON"
    "$PYTHON" -m venv "$VENV"
  fi
  "$VENV/bin/python" -m pip install -q --upgrade pip
  echo "setup: installing tradeops[dev] into $VENV (a few minutes on a fresh machine)"
  "$VENV/bin/python" -m pip install -q -e '.[dev]'
  echo "$want" > "$stamp"
fi

# The collection must resolve as tradeops.remediation from this checkout.
if [ ! -L collections/ansible_collections/tradeops/remediation ]; then
  mkdir -p collections/ansible_collections/tradeops
  ln -sfn ../../.. collections/ansible_collections/tradeops/remediation
fi
# tests/js: Mermaid's parser for the tests, pinned by its package-lock.json; reinstalled when the lock changes.
if [ ! -f tests/js/node_modules/.package-lock.json ] || [ tests/js/package-lock.json -nt tests/js/node_modules/.package-lock.json ]; then
  echo "setup: installing tests/js (npm ci: the Mermaid parser the tests check diagrams with)"
  npm ci --prefix tests/js --no-audit --no-fund --loglevel=error
fi
echo "setup: ok"
