#!/usr/bin/env bash
# Build a local stand-in for the official base image, for machines that reach no container
# registry (docs/deployment.md, "Images"): a Debian bookworm root filesystem made with
# debootstrap, with python3 + venv + pip, imported into podman as localhost/python:3.11-slim.
# Elsewhere, build the images from the official python:3.11-slim and never run this.
#
#   scripts/base-image.sh [IMAGE]      (root, Linux; about 1-4 minutes once per machine)
#
# Reuses the image when it exists. Needs: podman, debootstrap (apt-get install podman runc
# debootstrap); the Debian mirror is the one this machine's apt sources name.
set -euo pipefail

IMAGE="${1:-localhost/python:3.11-slim}"

if podman image exists "$IMAGE" 2>/dev/null; then
  echo "base image $IMAGE exists"
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "error: building the base image needs root (debootstrap and chroot)" >&2
  exit 2
fi
for tool in podman debootstrap; do
  command -v "$tool" >/dev/null || { echo "error: $tool is missing: apt-get install -y podman runc debootstrap" >&2; exit 2; }
done

# the first Debian archive URI of an active (non-comment) line of the apt sources
mirror="$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list 2>/dev/null \
  | grep -E '^(URIs:|deb )' | grep -oE 'https?://[^ ]+/debian/?( |$)' | grep -v security | head -1 | tr -d ' ' || true)"
mirror="${mirror:-http://deb.debian.org/debian}"
rootfs="$(mktemp -d /tmp/shipyard-rootfs.XXXXXX)"
cleanup() {
  umount "$rootfs/proc" 2>/dev/null || true
  umount "$rootfs/sys" 2>/dev/null || true
  rm -rf "$rootfs"
}
trap cleanup EXIT

echo "debootstrap bookworm from $mirror (a few minutes)..."
debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >/dev/null
mount -t proc proc "$rootfs/proc"
mount -t sysfs sys "$rootfs/sys"
chroot "$rootfs" apt-get install -y --no-install-recommends \
  python3 python3-venv python3-pip python-is-python3 ca-certificates >/dev/null
chroot "$rootfs" apt-get clean
rm -rf "$rootfs"/var/lib/apt/lists/*
# pip into a venv is the images' way; the marker only blocks system-wide installs
rm -f "$rootfs"/usr/lib/python3*/EXTERNALLY-MANAGED
umount "$rootfs/proc" "$rootfs/sys"
tar -C "$rootfs" -c . | podman import - "$IMAGE" >/dev/null
echo "base image $IMAGE built"
