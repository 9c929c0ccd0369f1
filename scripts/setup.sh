#!/usr/bin/env bash
# Install ussycode, build the guest image if missing, and start the platform on the embedded
# defaults (SQLite, domain ussy.localhost, Caddy's internal CA, QEMU). Run as root.
#
#   scripts/setup.sh                 install, build, then run `ussycode serve` (as a systemd
#                                    service where systemd runs, else in the foreground)
#   scripts/setup.sh --netns NAME    the same, but the server runs inside a new network namespace
#                                    NAME (for trying it on a machine whose network must not change)
set -euo pipefail

cd "$(dirname "$0")/.."
netns=""
if [ "${1:-}" = "--netns" ]; then
  netns=${2:?"--netns needs a namespace name"}
fi

scripts/install.sh
.venv/bin/ussycode image build

if [ -n "$netns" ]; then
  ip netns add "$netns"
  trap 'ip netns delete "$netns"' EXIT
  ip netns exec "$netns" ip link set lo up
  echo "setup.sh: serving inside network namespace $netns; connect with:"
  echo "  ip netns exec $netns ssh -p 2224 localhost"
  ip netns exec "$netns" .venv/bin/ussycode serve
  exit 0
fi

if [ -d /run/systemd/system ]; then
  sed "s|@ROOT@|$PWD|g" packaging/ussycode.service > /etc/systemd/system/ussycode.service
  systemctl daemon-reload
  systemctl enable --now ussycode.service
  echo "setup.sh: ussycode is running (systemctl status ussycode; journalctl -u ussycode -f)."
  echo "Connect with: ssh -p 2224 localhost"
else
  echo "setup.sh: no systemd here; running ussycode serve in the foreground (Ctrl-C stops it)."
  exec .venv/bin/ussycode serve
fi
