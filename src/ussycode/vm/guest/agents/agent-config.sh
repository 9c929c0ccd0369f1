#!/bin/sh
# Write the LLM settings of pi and OpenCode for the current user from the environment that
# zz-ussycode-agents.sh exports: the gateway's base URLs, and in Routussy mode
# OPENCODE_BASE_URL. Login shells run this, so a changed environment applies at the next login.
#
# ~/.pi/agent/models.json is pi's own file: it is rewritten only while it still matches the
# copy this script wrote last, so edits by the user are kept. ~/.config/ussycode/opencode.json
# is read by OpenCode through OPENCODE_CONFIG and always rewritten; the user's own
# ~/.config/opencode/opencode.json applies under it.
set -eu

gateway=http://169.254.169.254/gateway/llm
state="$HOME/.config/ussycode"
pi_dir="$HOME/.pi/agent"

# Print $1 as a JSON string.
json() {
    printf '"%s"' "$(printf '%s' "$1" | sed 's/\\/\\\\/g; s/"/\\"/g')"
}

# Replace file $1 with standard input if the content differs.
replace() {
    cat > "$1.new"
    if cmp -s "$1.new" "$1"; then
        rm -f "$1.new"
    else
        mv -f "$1.new" "$1"
    fi
}

mkdir -p "$state" "$pi_dir"

openai="$(json "${OPENAI_BASE_URL:-$gateway/openai/v1}")"
anthropic="$(json "${ANTHROPIC_BASE_URL:-$gateway/anthropic}")"
routussy=""
if [ -n "${OPENCODE_BASE_URL:-}" ]; then
    routussy="$(json "$OPENCODE_BASE_URL")"
fi

{
    printf '{\n  "providers": {\n'
    printf '    "openai": {"baseUrl": %s},\n' "$openai"
    printf '    "anthropic": {"baseUrl": %s},\n' "$anthropic"
    printf '    "fireworks": {"baseUrl": "%s/fireworks/v1", "apiKey": "ussycode-gateway"},\n' "$gateway"
    if [ -n "$routussy" ]; then
        printf '    "opencode": {"baseUrl": %s},\n' "$routussy"
    fi
    printf '    "openrouter": {"baseUrl": "%s/openrouter/v1", "apiKey": "ussycode-gateway"}\n' "$gateway"
    printf '  }\n}\n'
} > "$state/pi-models.json.new"
if [ ! -e "$pi_dir/models.json" ] || cmp -s "$pi_dir/models.json" "$state/pi-models.json"; then
    cp "$state/pi-models.json.new" "$pi_dir/models.json"
fi
mv -f "$state/pi-models.json.new" "$state/pi-models.json"

if [ ! -e "$pi_dir/settings.json" ]; then
    provider=anthropic
    if [ -n "$routussy" ]; then
        provider=opencode
    fi
    printf '{\n  "defaultProvider": "%s",\n  "enableInstallTelemetry": false\n}\n' "$provider" \
        > "$pi_dir/settings.json"
fi

{
    printf '{\n  "$schema": "https://opencode.ai/config.json",\n'
    printf '  "autoupdate": false,\n  "share": "disabled",\n'
    printf '  "provider": {\n'
    printf '    "openai": {"options": {"baseURL": %s, "apiKey": "ussycode-gateway"}},\n' "$openai"
    if [ -n "$routussy" ]; then
        printf '    "opencode": {"options": {"baseURL": %s}},\n' "$routussy"
    fi
    printf '    "anthropic": {"options": {"baseURL": "%s/v1", "apiKey": "ussycode-gateway"}}\n' \
        "$(printf '%s' "${ANTHROPIC_BASE_URL:-$gateway/anthropic}" | sed 's/\\/\\\\/g; s/"/\\"/g; s:/*$::')"
    printf '  }\n}\n'
} | replace "$state/opencode.json"
