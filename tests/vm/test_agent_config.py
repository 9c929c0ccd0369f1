"""The image's agent-config.sh: pi and OpenCode settings written from the environment."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

from ussycode.vm import image

SCRIPT = image.GUEST_DIR / "agents" / "agent-config.sh"
GATEWAY = "http://169.254.169.254/gateway/llm"


def run_config(home: Path, **env: str) -> None:
    clean = {"PATH": os.environ["PATH"], "HOME": str(home), **env}
    subprocess.run(["sh", str(SCRIPT)], env=clean, check=True, timeout=30)


def read(path: Path) -> Any:
    return json.loads(path.read_text())


def test_agent_config_defaults(tmp_path: Path) -> None:
    run_config(tmp_path)
    models = read(tmp_path / ".pi/agent/models.json")["providers"]
    assert models["openai"] == {"baseUrl": f"{GATEWAY}/openai/v1"}
    assert models["anthropic"] == {"baseUrl": f"{GATEWAY}/anthropic"}
    assert models["fireworks"]["baseUrl"] == f"{GATEWAY}/fireworks/v1"
    assert models["openrouter"]["baseUrl"] == f"{GATEWAY}/openrouter/v1"
    assert "opencode" not in models
    settings = read(tmp_path / ".pi/agent/settings.json")
    assert settings == {"defaultProvider": "anthropic", "enableInstallTelemetry": False}
    opencode = read(tmp_path / ".config/ussycode/opencode.json")
    assert opencode["provider"]["openai"]["options"]["baseURL"] == f"{GATEWAY}/openai/v1"
    assert opencode["provider"]["anthropic"]["options"]["baseURL"] == f"{GATEWAY}/anthropic/v1"
    assert opencode["autoupdate"] is False


def test_agent_config_honours_environment(tmp_path: Path) -> None:
    run_config(tmp_path)
    run_config(
        tmp_path,
        OPENAI_BASE_URL="http://10.0.0.1/o/v1",
        ANTHROPIC_BASE_URL='http://10.0.0.1/a"b/',
        OPENCODE_BASE_URL="https://routussy.example/v1",
    )
    models = read(tmp_path / ".pi/agent/models.json")["providers"]
    assert models["openai"] == {"baseUrl": "http://10.0.0.1/o/v1"}
    assert models["anthropic"] == {"baseUrl": 'http://10.0.0.1/a"b/'}
    assert models["opencode"] == {"baseUrl": "https://routussy.example/v1"}
    opencode = read(tmp_path / ".config/ussycode/opencode.json")["provider"]
    assert opencode["anthropic"]["options"]["baseURL"] == 'http://10.0.0.1/a"b/v1'
    assert opencode["opencode"]["options"]["baseURL"] == "https://routussy.example/v1"
    # settings.json is written once, and the first login had no Routussy.
    assert read(tmp_path / ".pi/agent/settings.json")["defaultProvider"] == "anthropic"


def test_agent_config_routussy_default_provider(tmp_path: Path) -> None:
    run_config(tmp_path, OPENCODE_BASE_URL="https://routussy.example/v1")
    assert read(tmp_path / ".pi/agent/settings.json")["defaultProvider"] == "opencode"


def test_agent_config_keeps_user_edits(tmp_path: Path) -> None:
    run_config(tmp_path)
    models = tmp_path / ".pi/agent/models.json"
    edited = '{"providers": {"ollama": {"baseUrl": "http://localhost:11434/v1"}}}\n'
    models.write_text(edited)
    (tmp_path / ".pi/agent/settings.json").write_text('{"defaultProvider": "openai"}\n')
    run_config(tmp_path, OPENAI_BASE_URL="http://10.0.0.1/o/v1")
    assert models.read_text() == edited
    assert read(tmp_path / ".pi/agent/settings.json") == {"defaultProvider": "openai"}
