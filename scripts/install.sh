#!/usr/bin/env bash
# Install what ussycode needs on a Debian machine (run as root): system packages with apt and
# the Python package with its test tools into .venv in the checkout. Safe to run again.
set -euo pipefail

cd "$(dirname "$0")/.."
# chromium drives the browser login test and zbar-tools (zbarimg) reads back the QR code that
# `browser --qr` draws; tmux is the terminal the REPL tests type into, and rsync and git are
# tested over SSH into a VM. None of them is needed to run the platform.
PACKAGES=(
  qemu-system-x86 qemu-utils caddy mmdebstrap nftables iproute2 openssh-client e2fsprogs
  ca-certificates curl python3 python3-venv sqlite3 procps
  chromium zbar-tools tmux rsync git
)

if [ "$(id -u)" -ne 0 ]; then
  echo "install.sh: run as root (it installs system packages with apt)" >&2
  exit 1
fi

missing=()
for package in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "install.sh: installing ${missing[*]}"
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# Debian's caddy package starts its own service on port 80; ussycode runs and configures its own Caddy.
if [ -d /run/systemd/system ] && systemctl is-enabled caddy.service >/dev/null 2>&1; then
  echo "install.sh: disabling the caddy.service of the Debian package (ussycode supervises Caddy itself)"
  systemctl disable --now caddy.service
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/pip install -q --disable-pip-version-check -e '.[test]'
echo "install.sh: done ($(.venv/bin/ussycode --version))"
