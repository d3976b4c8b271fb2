#!/usr/bin/env bash
# Build the container images of the Molecule drills (called by `make images`).
#
#   tradeops/base:<hash>           debootstrap (bookworm, minbase, + images/base/packages) -> docker import
#   tradeops/trading-host:<hash>   docker build images/trading-host/Dockerfile FROM the base: python3,
#                                  PostgreSQL (+contrib: amcheck), Redis, procps, iproute2, and the lab engines
#                                  (src/tradeops -> /opt/tradeops/src, on PYTHONPATH)
#
# No registry is reachable, so nothing is pulled: the base is a debootstrap root filesystem loaded
# with `docker import`, and apt inside `docker build` uses the Debian mirror this host's apt uses
# (read from /etc/apt/sources.list.d/*.sources or /etc/apt/sources.list at run time;
# $TRADEOPS_DEBIAN_MIRROR overrides it).
#
# Each tag is a content hash of the image's inputs; an image is built only when its hash tag is
# missing, so a second run takes about a second. Both images are also tagged `current`, the tag
# the molecule scenarios name. `scripts/images.sh --print-tags` prints the hash tags and builds nothing.
set -euo pipefail
SELF=$(readlink -f "$0")
cd "$(dirname "$SELF")/.."

SUITE=bookworm
BASE_REPO=tradeops/base
HOST_REPO=tradeops/trading-host
export DOCKER_BUILDKIT=0 # the classic builder: no buildx component is needed

log() { echo "images: $*" >&2; }
die() { echo "images: ERROR: $*" >&2; exit 1; }

hash_files() { # the sha256 (16 hex digits) of the named files' paths and contents, in a stable order
  local f
  for f in "$@"; do
    printf '%s\0' "$f"
    sha256sum <"$f"
  done | sha256sum | cut -c1-16
}

src_files() { # the lab code copied into the trading host (no caches)
  find src/tradeops -type f ! -name '*.pyc' ! -path '*/__pycache__/*' | LC_ALL=C sort
}

# The base's inputs: the suite, its package list and the debootstrap recipe (the section of this
# script between the "base recipe" markers), so editing the rest of the script does not rebuild it.
base_recipe() { sed -n '/^# --- base recipe ---$/,/^# --- end base recipe ---$/p' "$SELF"; }
BASE_HASH=$( { printf '%s\n' "$SUITE"; cat images/base/packages; base_recipe; } | sha256sum | cut -c1-16)
BASE_IMAGE=$BASE_REPO:$BASE_HASH
HOST_HASH=$( { printf '%s\n' "$BASE_HASH"; hash_files scripts/images.sh $(find images/trading-host -type f | LC_ALL=C sort) $(src_files); } | sha256sum | cut -c1-16)
HOST_IMAGE=$HOST_REPO:$HOST_HASH

if [ "${1:-}" = "--print-tags" ]; then
  echo "$BASE_IMAGE"
  echo "$HOST_IMAGE"
  exit 0
fi

command -v docker >/dev/null 2>&1 || die "the docker CLI is not installed (run: make setup)"
docker info >/dev/null 2>&1 || die "Docker is not running or not reachable (run: make setup, which starts dockerd)"

# One build at a time on this Docker daemon (two checkouts, or two test runs, may call this at once).
exec 9>/tmp/tradeops-images.lock
flock 9

have_image() { docker image inspect "$1" >/dev/null 2>&1; }

tag_current() { # <repo>:<hash> -> also <repo>:current (only when it points elsewhere)
  local image=$1 repo=${1%:*} want have
  want=$(docker image inspect -f '{{.Id}}' "$image")
  have=$(docker image inspect -f '{{.Id}}' "$repo:current" 2>/dev/null || true)
  [ "$want" = "$have" ] || docker tag "$image" "$repo:current"
}

debian_mirror() { # the Debian archive this host's apt uses
  if [ -n "${TRADEOPS_DEBIAN_MIRROR:-}" ]; then echo "$TRADEOPS_DEBIAN_MIRROR"; return; fi
  local f uri
  # deb822 sources: the URIs of the stanza whose Suites hold the bare suite (not -security/-updates)
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    uri=$(awk -v suite="$SUITE" '
      BEGIN { RS = ""; FS = "\n" }
      {
        uris = ""; ok = 0; deb = 0
        for (i = 1; i <= NF; i++) {
          if ($i ~ /^URIs:/) { uris = $i; sub(/^URIs:[ \t]*/, "", uris) }
          if ($i ~ /^Types:/ && $i ~ /(^|[ \t])deb([ \t]|$)/) deb = 1
          if ($i ~ /^Suites:/) { n = split($i, s, /[ \t]+/); for (j = 2; j <= n; j++) if (s[j] == suite) ok = 1 }
        }
        if (ok && deb && uris != "") { split(uris, u, /[ \t]+/); print u[1]; exit }
      }' "$f")
    if [ -n "$uri" ]; then echo "$uri"; return; fi
  done
  # one-line sources
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] || continue
    uri=$(awk -v suite="$SUITE" '$1 == "deb" { i = 2; if ($2 ~ /^\[/) { while ($i !~ /\]$/) i++; i++ } if ($(i+1) == suite) { print $i; exit } }' "$f")
    if [ -n "$uri" ]; then echo "$uri"; return; fi
  done
  die "no Debian mirror for '$SUITE' in /etc/apt/sources.list(.d); set TRADEOPS_DEBIAN_MIRROR"
}

# --- base recipe ---
build_base() {
  command -v debootstrap >/dev/null 2>&1 || die "debootstrap is not installed (run: make setup)"
  [ "$(id -u)" -eq 0 ] || die "debootstrap needs root to build $BASE_IMAGE"
  local mirror include rootfs keyring=()
  mirror=$(debian_mirror)
  include=$(grep -v '^[[:space:]]*\(#\|$\)' images/base/packages | paste -sd, -)
  [ -f /usr/share/keyrings/debian-archive-keyring.gpg ] && keyring=(--keyring=/usr/share/keyrings/debian-archive-keyring.gpg)
  rootfs=$(mktemp -d /tmp/tradeops-rootfs.XXXXXX)
  trap 'rm -rf "$rootfs"' EXIT
  log "debootstrap $SUITE (minbase, +$include) from the host's Debian mirror"
  debootstrap --variant=minbase --include="$include" "${keyring[@]}" "$SUITE" "$rootfs" "$mirror" \
    >/tmp/tradeops-debootstrap.log 2>&1 \
    || { tail -n 30 /tmp/tradeops-debootstrap.log >&2; die "debootstrap failed (log: /tmp/tradeops-debootstrap.log)"; }
  # smaller and reproducible-ish: no package caches or lists, no machine identity
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs"/tmp/*
  : >"$rootfs/etc/machine-id"
  log "docker import -> $BASE_IMAGE"
  tar -C "$rootfs" --numeric-owner -c . \
    | docker import --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'CMD ["/bin/bash"]' - "$BASE_IMAGE" >/dev/null
  rm -rf "$rootfs"
  trap - EXIT
}
# --- end base recipe ---

build_host() {
  local ctx
  ctx=$(mktemp -d /tmp/tradeops-build.XXXXXX)
  trap 'rm -rf "$ctx"' EXIT
  cp -a images/trading-host/. "$ctx/"
  mkdir -p "$ctx/src"
  src_files | while read -r f; do
    mkdir -p "$ctx/$(dirname "$f")"
    cp "$f" "$ctx/$f"
  done
  log "docker build -> $HOST_IMAGE (FROM $BASE_IMAGE)"
  # --network host: apt reaches the mirror the way the host does, whatever the bridge allows
  docker build --network host --build-arg "BASE_IMAGE=$BASE_IMAGE" \
    --label "tradeops.inputs=$HOST_HASH" -t "$HOST_IMAGE" "$ctx" >/tmp/tradeops-docker-build.log 2>&1 \
    || { tail -n 30 /tmp/tradeops-docker-build.log >&2; die "docker build failed (log: /tmp/tradeops-docker-build.log)"; }
  rm -rf "$ctx"
  trap - EXIT
}

prune_old_tags() { # <repo> <hash to keep>: untag this script's older hash tags (the layers of an image a
  # container still uses stay; only the names go). Never touches other repositories.
  local repo=$1 keep=$2 tag
  docker image ls --format '{{.Tag}}' "$repo" | grep -E '^[0-9a-f]{16}$' | while read -r tag; do
    [ "$tag" = "$keep" ] || docker image rm "$repo:$tag" >/dev/null 2>&1 || true
  done
}

start=$(date +%s)
if have_image "$BASE_IMAGE"; then log "$BASE_IMAGE is up to date"; else build_base; fi
tag_current "$BASE_IMAGE"
if have_image "$HOST_IMAGE"; then log "$HOST_IMAGE is up to date"; else build_host; fi
tag_current "$HOST_IMAGE"
prune_old_tags "$BASE_REPO" "$BASE_HASH"
prune_old_tags "$HOST_REPO" "$HOST_HASH"
log "ok: $BASE_REPO:current = $BASE_IMAGE, $HOST_REPO:current = $HOST_IMAGE ($(($(date +%s) - start)) s)"
