#!/usr/bin/env bash
# Builds the image with buildah from the repository's Dockerfile, without Docker and without a
# registry: the base is a Debian root made by debootstrap from this machine's Debian mirror, and
# pip installs only from a wheelhouse made here from the runtime lock (`make image` runs this).
#
#   IMAGE          the tag to build (localhost/distill-watchdog:dev)
#   CACHE          where the base's tarball and the wheelhouse are kept between runs (build/image)
#   PYTHON         the host's Python, whose pip builds the wheelhouse (python3)
#   DEBIAN_MIRROR  overrides the mirror read from /etc/apt/sources.list*
#   SUITE          the Debian release of the base (bookworm: Python 3.11, like python:3.11-slim-bookworm)
set -euo pipefail
cd "$(dirname "$0")/../.."

IMAGE=${IMAGE:-localhost/distill-watchdog:dev}
CACHE=${CACHE:-build/image}
PYTHON=${PYTHON:-python3}
SUITE=${SUITE:-bookworm}
PACKAGES=python3,python3-venv,ca-certificates
BUILDAH=(buildah --storage-driver vfs)
BASE_IMAGE=localhost/distill-watchdog-base:$SUITE

log() { printf '%s image: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# Network steps (the Debian mirror, PyPI) are tried three times: a mirror's passing hiccup
# must not fail a build.
retry() {
  local attempt
  for attempt in 1 2 3; do
    "$@" && return 0
    [ "$attempt" = 3 ] || { log "attempt $attempt failed; trying again in $((attempt * 15)) s"; sleep $((attempt * 15)); }
  done
  return 1
}

need() {
  for tool in "$@"; do
    command -v "$tool" >/dev/null || { echo "image: $tool is not installed (apt-get install -y buildah debootstrap)" >&2; exit 1; }
  done
}
need buildah debootstrap tar sha256sum "$PYTHON"
[ "$(id -u)" = 0 ] || { echo "image: run as root (debootstrap, and buildah's containers storage)" >&2; exit 1; }

mirror() {
  if [ -n "${DEBIAN_MIRROR:-}" ]; then echo "$DEBIAN_MIRROR"; return; fi
  local found
  found=$(
    { grep -hs -E '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{print $2}'
      grep -hs -E '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list | awk '{print $2}'
    } | grep -v -E 'security|updates|backports' | grep -E '/debian/?$' | head -n 1
  )
  [ -n "$found" ] || { echo "image: no Debian mirror in /etc/apt/sources.list*; set DEBIAN_MIRROR" >&2; exit 1; }
  echo "$found"
}

mkdir -p "$CACHE"
MIRROR=$(mirror)
# What the base is made of; a change makes a new base. The mirror is not part of it: any mirror
# of the suite gives the same packages.
RECIPE=$(printf 'suite=%s variant=minbase packages=%s slim=1' "$SUITE" "$PACKAGES" | sha256sum | cut -c1-16)

base_recipe() {
  "${BUILDAH[@]}" inspect --type image --format '{{index .OCIv1.Config.Labels "distill-watchdog.base-recipe"}}' \
    "$BASE_IMAGE" 2>/dev/null || true
}

# --- the base: a Debian root with Python 3.11, cached as a tarball and in the containers storage --
make_base_tarball() {
  local root="$CACHE/rootfs"
  rm -rf "$root" "$CACHE/base.tar.tmp"
  log "debootstrap $SUITE from $MIRROR (about a minute)"
  debootstrap_once() {
    rm -rf "$root"
    debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$root" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1
  }
  retry debootstrap_once || { tail -n 20 "$CACHE/debootstrap.log" >&2; exit 1; }
  # What a slim image leaves out: package caches and lists, documentation, man pages, locales.
  rm -rf "$root"/var/cache/apt/* "$root"/var/lib/apt/lists/* "$root"/var/log/* \
         "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* \
         "$root"/usr/share/locale/* "$root"/tmp/* "$root"/root/.cache
  tar --numeric-owner --xattrs -C "$root" -cf "$CACHE/base.tar.tmp" .
  rm -rf "$root"
  mv "$CACHE/base.tar.tmp" "$CACHE/base.tar"
  echo "$RECIPE" >"$CACHE/base.recipe"
}

import_base() {
  log "importing the base as $BASE_IMAGE"
  local ctr mnt
  ctr=$("${BUILDAH[@]}" from scratch)
  trap '"${BUILDAH[@]}" rm "$ctr" >/dev/null 2>&1 || true' EXIT
  mnt=$("${BUILDAH[@]}" mount "$ctr")
  tar --numeric-owner --xattrs -C "$mnt" -xpf "$CACHE/base.tar"
  "${BUILDAH[@]}" umount "$ctr" >/dev/null
  "${BUILDAH[@]}" config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --env LANG=C.UTF-8 --cmd python3 --label "distill-watchdog.base-recipe=$RECIPE" "$ctr"
  "${BUILDAH[@]}" commit --quiet --rm --format docker "$ctr" "$BASE_IMAGE" >/dev/null
  trap - EXIT
}

SECONDS=0
if [ "$(base_recipe)" != "$RECIPE" ]; then
  if [ "$(cat "$CACHE/base.recipe" 2>/dev/null)" != "$RECIPE" ] || [ ! -f "$CACHE/base.tar" ]; then
    make_base_tarball
  fi
  import_base
else
  log "base $BASE_IMAGE is up to date"
fi
log "phase base: ${SECONDS} s"

SECONDS=0

# --- the wheelhouse: every pin of the runtime lock as a wheel (torch==2.13.0 is the CPU build) ---
LOCK=requirements/runtime.txt
WHEELS="$CACHE/wheels"
lock_sum=$(sha256sum "$LOCK" | cut -c1-64)
if [ "$(cat "$WHEELS/.lock-sha256" 2>/dev/null)" != "$lock_sum" ]; then
  log "wheelhouse from $LOCK"
  rm -rf "$WHEELS.new" && mkdir -p "$WHEELS.new"
  # Wheels of an earlier wheelhouse are reused; sdists are built into wheels here.
  find_links=()
  [ -d "$WHEELS" ] && find_links=(--find-links "$WHEELS")
  retry "$PYTHON" -m pip wheel --quiet --no-deps --disable-pip-version-check "${find_links[@]}" \
    -r "$LOCK" -w "$WHEELS.new" >"$CACHE/wheels.log" 2>&1 \
    || { tail -n 20 "$CACHE/wheels.log" >&2; exit 1; }
  echo "$lock_sum" >"$WHEELS.new/.lock-sha256"
  rm -rf "$WHEELS" && mv "$WHEELS.new" "$WHEELS"
else
  log "wheelhouse is up to date"
fi
# The build fails here, not in the image, when the wheelhouse holds a CUDA build of torch.
if ls "$WHEELS"/torch-*.whl | grep -qv '+cpu'; then
  echo "image: $(ls "$WHEELS"/torch-*.whl) is not the CPU build of torch" >&2
  exit 1
fi

log "phase wheelhouse: ${SECONDS} s"

# --- the image, from the same Dockerfile as `docker build` ------------------------------------
SECONDS=0
old_id=$("${BUILDAH[@]}" images --noheading --format '{{.ID}}' "$IMAGE" 2>/dev/null || true)
log "buildah bud -> $IMAGE"
"${BUILDAH[@]}" bud --isolation chroot --format docker --layers=false \
  --build-arg PYTHON_IMAGE="$BASE_IMAGE" \
  --build-arg PIP_NO_INDEX=1 \
  --build-arg PIP_FIND_LINKS=/wheelhouse \
  --build-context wheelhouse="$WHEELS" \
  --tag "$IMAGE" --file Dockerfile . >"$CACHE/build.log" 2>&1 \
  || { tail -n 40 "$CACHE/build.log" >&2; echo "image: buildah bud failed (log: $CACHE/build.log)" >&2; exit 1; }
new_id=$("${BUILDAH[@]}" images --noheading --format '{{.ID}}' "$IMAGE")
# The previous build of this tag is left untagged: remove it (vfs keeps whole copies).
if [ -n "$old_id" ] && [ "$old_id" != "$new_id" ]; then
  "${BUILDAH[@]}" rmi "$old_id" >/dev/null 2>&1 || true
fi
log "phase bud: ${SECONDS} s"
"${BUILDAH[@]}" images --format '{{.Name}}:{{.Tag}} {{.ID}} {{.Size}}' "$IMAGE"
