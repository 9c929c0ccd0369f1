"""Environment variables that point tools inside a VM at the LLM gateway.

They carry base URLs and placeholders only. The placeholder API keys exist because SDKs refuse
to start without a key variable; the gateway removes whatever key a VM sends. With
`--llm-routussy yes`, `OPENCODE_API_KEY` is the owner's SSH key fingerprint, which is public.
"""

from __future__ import annotations

from ussycode.config import Config
from ussycode.store import VM, Store

GATEWAY_URL = "http://169.254.169.254/gateway/llm"
PLACEHOLDER_KEY = "ussycode-gateway"


def llm_environment(config: Config, store: Store, vm: VM) -> dict[str, str]:
    """Return the LLM variables of `vm`'s environment."""
    env = {
        "USSYCODE_LLM_GATEWAY": GATEWAY_URL,
        "OPENAI_BASE_URL": f"{GATEWAY_URL}/openai/v1",
        "OPENAI_API_KEY": PLACEHOLDER_KEY,
        "ANTHROPIC_BASE_URL": f"{GATEWAY_URL}/anthropic",
        "ANTHROPIC_API_KEY": PLACEHOLDER_KEY,
    }
    if config.llm_routussy:
        keys = store.list_keys(vm.owner_id)
        if keys:
            env["OPENCODE_BASE_URL"] = f"{config.routussy_url}/v1"
            env["OPENCODE_API_KEY"] = f"ussycode-fp:{keys[0].fingerprint}"
    return env
