"""Settings of the LLM gateway: providers, limits and the variables a VM gets."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.llm.harness import load_config
from ussycode.errors import ConfigError
from ussycode.llm.env import llm_environment
from ussycode.llm.limits import LLMLimits, parse_llm_limits
from ussycode.llm.providers import ErrorStyle, providers
from ussycode.store import Store


def test_settings_default_providers() -> None:
    found = providers(load_config({}))
    assert {name: provider.base_url for name, provider in found.items()} == {
        "openai": "https://api.openai.com",
        "anthropic": "https://api.anthropic.com",
        "fireworks": "https://api.fireworks.ai/inference",
        "openrouter": "https://openrouter.ai/api",
    }
    assert found["anthropic"].style is ErrorStyle.ANTHROPIC
    assert found["anthropic"].auth_headers("k") == {"x-api-key": "k"}
    assert found["openai"].auth_headers("k") == {"Authorization": "Bearer k"}


def test_settings_custom_endpoints() -> None:
    config = load_config(
        {
            "USSYCODE_LLM_ENDPOINTS": "ollama=http://10.0.0.1:11434/, vllm=https://gpu.example",
            "USSYCODE_LLM_ENDPOINT_KEYS": "vllm=abc",
        }
    )
    found = providers(config)
    assert found["ollama"].base_url == "http://10.0.0.1:11434"
    assert found["ollama"].platform_key == ""
    assert found["vllm"].platform_key == "abc"
    assert "abc" not in repr(config)
    assert config.public_dict()["llm_endpoint_keys"] == "(set)"


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"USSYCODE_LLM_ENDPOINTS": "openai=http://x.example"}, "'openai' is a built-in provider"),
        ({"USSYCODE_LLM_ENDPOINTS": "Bad=http://x.example"}, "the entry for 'Bad' is not NAME=URL"),
        ({"USSYCODE_LLM_ENDPOINTS": "ollama=ftp://x"}, "expected an http:// or https:// URL"),
        ({"USSYCODE_LLM_ENDPOINTS": "a=http://x.example,a=http://y.example"}, "a is given twice"),
        ({"USSYCODE_LLM_ENDPOINT_KEYS": "vllm=abc"}, "'vllm' is not in --llm-endpoints"),
        ({"USSYCODE_LLM_ENDPOINT_KEYS": "sk-secret-without-name"}, "(value hidden): entry 1 is not NAME=KEY"),
        ({"USSYCODE_LLM_TIER_CITIZEN": "tokens=5"}, "invalid --llm-tier-citizen"),
        ({"USSYCODE_LLM_ROUTUSSY": "yes"}, "--llm-routussy yes needs --routussy-url"),
        ({"USSYCODE_LLM_OWN_KEY_RPM": "0"}, "must be a positive whole number"),
        # Each of these URLs passed the check, and every request to it then failed with a 500.
        (
            {"USSYCODE_LLM_ENDPOINTS": "x=http://user:pw@x.example"},
            "the URL contains a user name or password",
        ),
        ({"USSYCODE_LLM_OPENAI_URL": "https://:pw@x.example"}, "the URL contains a user name or password"),
        ({"USSYCODE_LLM_ENDPOINTS": "x=http://x.example:99999"}, "Port out of range"),
        ({"USSYCODE_LLM_ENDPOINTS": "x=http://x.example:port"}, "Port could not be cast"),
        ({"USSYCODE_LLM_ENDPOINTS": "x=http://[::1"}, "Invalid IPv6 URL"),
        ({"USSYCODE_LLM_ENDPOINTS": "x=http://:80"}, "the URL has no host name"),
    ],
)
def test_settings_invalid(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(environ)
    assert message in str(caught.value)
    assert "sk-secret-without-name" not in str(caught.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("tokens=1", "missing rpm"),
        ("tokens=1,rpm=0", "rpm must be at least 1"),
        ("tokens=-1,rpm=2", "tokens must be a whole number of 0 or more, not '-1'"),
        ("tokens=1,rpm=2,tokens=3", "tokens is given twice"),
        ("tokens=1,rpm=2,cost=3", "unknown key 'cost': expected tokens and rpm"),
        ("tokens", "expected KEY=VALUE, not 'tokens'"),
    ],
)
def test_settings_llm_limits_invalid(text: str, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_llm_limits(text)
    assert str(caught.value) == message


def test_settings_llm_limits() -> None:
    assert parse_llm_limits(" tokens=0, rpm=3 ") == LLMLimits(tokens_per_day=0, requests_per_minute=3)


def test_settings_vm_environment(tmp_path: Path) -> None:
    store = Store(tmp_path / "store.db")
    owner = store.create_user("alice", "SHA256:" + "A" * 43, "ssh-ed25519 AAAAalice")
    vm = store.create_vm(
        name="owl", owner_id=owner.id, state="running", image="i", image_path="/x", cpus=1,
        memory_mb=512, disk_bytes=1, ip="10.0.0.2", mac="52:54:00:00:00:01",
    )  # fmt: skip
    plain = llm_environment(load_config({"USSYCODE_LLM_OPENAI_KEY": "sk-platform-1234567"}), store, vm)
    assert plain == {
        "USSYCODE_LLM_GATEWAY": "http://169.254.169.254/gateway/llm",
        "OPENAI_BASE_URL": "http://169.254.169.254/gateway/llm/openai/v1",
        "OPENAI_API_KEY": "ussycode-gateway",
        "ANTHROPIC_BASE_URL": "http://169.254.169.254/gateway/llm/anthropic",
        "ANTHROPIC_API_KEY": "ussycode-gateway",
    }
    routussy = llm_environment(
        load_config({"USSYCODE_ROUTUSSY_URL": "https://routussy.example", "USSYCODE_LLM_ROUTUSSY": "yes"}),
        store,
        vm,
    )
    assert routussy["OPENCODE_BASE_URL"] == "https://routussy.example/v1"
    assert routussy["OPENCODE_API_KEY"] == "ussycode-fp:SHA256:" + "A" * 43
