#!/bin/sh
# Start the default coding agent, pi, in the detached tmux session "agent" with the first
# prompt read from file "$1", and keep a login shell in the session after pi exits.
# ussycode-agent.service runs this once, at the first boot of a VM created with `new --prompt`,
# as the ussycode user in a login shell, so the agent gets the VM's environment.
set -eu

prompt="$(cat "$1")"
# pi reads an argument that starts with "-" as an option, so such a prompt gets a leading space.
case "$prompt" in
-*) prompt=" $prompt" ;;
esac

cd "$HOME"
# -x and -y give the detached window a size until a client attaches. pi and the commands it
# runs get nice 10, so that sshd and the owner's logins stay responsive while it works, which
# matters under emulation (TCG), where pi's start is slow and CPU-bound.
exec tmux new-session -d -s agent -x 160 -y 48 \
    sh -c 'nice -n 10 pi "$1"; exec bash --login' agent-session "$prompt"
