#!/usr/bin/env bash
# System tools the tests and benchmarks drive (Debian packages; nothing downloads at run time):
#   chromium   the web page's browser test (Playwright drives it with executable_path)
#   prometheus ships promtool, which checks the alert rules in the tests
#   wrk        the serving benchmark's load generator
#   shellcheck the workflows' shell steps (through actionlint)
#   podman, runc, debootstrap   build and run the serve image in the container tests
#              (tests/deploy/test_images.py; scripts/base-image.sh makes the local base image)
# Installs what is missing when run as root with apt; elsewhere it prints what to install, and the
# tests that need a tool skip with that reason.
set -euo pipefail
declare -A tool=([chromium]=chromium [promtool]=prometheus [wrk]=wrk [podman]=podman [runc]=runc [debootstrap]=debootstrap [shellcheck]=shellcheck)
missing=()
for binary in "${!tool[@]}"; do
  command -v "$binary" >/dev/null 2>&1 || missing+=("${tool[$binary]}")
done
if [ ${#missing[@]} -eq 0 ]; then exit 0; fi
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "Installing system packages: ${missing[*]}"
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  echo "Not installed (tests that need them will skip): ${missing[*]} — install with: sudo apt-get install ${missing[*]}"
fi
