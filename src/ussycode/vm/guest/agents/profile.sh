# Login shells of the ussycode image: point the coding agents at the LLM gateway, and start pi
# (or attach to the "agent" tmux session) when a user logs in over SSH with a terminal.
# Installed as /etc/profile.d/zz-ussycode-agents.sh, after ussycode.sh has set the variables
# from the VM's metadata.

# The gateway adds the credentials on the host, so a placeholder key is enough in the VM.
: "${OPENAI_BASE_URL:=http://169.254.169.254/gateway/llm/openai/v1}"
: "${ANTHROPIC_BASE_URL:=http://169.254.169.254/gateway/llm/anthropic}"
: "${OPENAI_API_KEY:=ussycode-gateway}"
: "${ANTHROPIC_API_KEY:=ussycode-gateway}"
# pi contacts pi.dev for update checks and install telemetry at start, which a VM does not need.
: "${PI_SKIP_VERSION_CHECK:=1}"
: "${PI_TELEMETRY:=0}"
export OPENAI_BASE_URL ANTHROPIC_BASE_URL OPENAI_API_KEY ANTHROPIC_API_KEY PI_SKIP_VERSION_CHECK PI_TELEMETRY
export OPENCODE_CONFIG="$HOME/.config/ussycode/opencode.json"

if [ "$(id -u)" != 0 ] && [ -x /usr/local/lib/ussycode/agent-config.sh ]; then
    /usr/local/lib/ussycode/agent-config.sh || true
fi

# Only the first shell of an interactive SSH login with a terminal, and not inside tmux.
if [ -n "${SSH_TTY:-}" ] && [ -z "${TMUX:-}" ] && [ "${SHLVL:-1}" = 1 ] && [ -t 0 ] && [ -t 1 ] \
    && [ -z "${USSYCODE_AGENT_STARTED:-}" ] && [ "$(id -u)" != 0 ]; then
    case $- in
    *i*)
        export USSYCODE_AGENT_STARTED=1
        if [ "${USSYCODE_AGENT_ON_LOGIN:-1}" = 0 ]; then
            if tmux has-session -t agent 2>/dev/null; then
                echo 'An agent runs in tmux session "agent": attach with "tmux attach -t agent".'
            fi
        elif tmux has-session -t agent 2>/dev/null; then
            tmux attach-session -t agent
        elif command -v pi >/dev/null 2>&1; then
            echo 'Starting pi, the coding agent (quit with Ctrl+D for a shell; turn off with "settings agent-on-login off").'
            pi
        fi
        ;;
    esac
fi
