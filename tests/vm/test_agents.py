"""The agent-ready image in a real VM: toolchains and agents installed, `new --prompt` starting
pi in tmux, and a terminal login starting pi or attaching to that session, until the owner turns
that off with `settings agent-on-login off`.

One VM serves the module, and the tests run in file order, because each boot takes one to two
minutes under TCG. No LLM gateway runs here: pi's requests fail, and the tests check only the
session, the prompt it shows, and the login behaviour.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.conftest import require_image, require_root
from tests.framework.platform import Platform, Result, SSHUser, wait_until
from tests.framework.terminal import Terminal

pytestmark = [pytest.mark.vm, pytest.mark.netns]

VM = "agent-owl"
# Quotes, a variable and a command substitution must reach pi literally.
PROMPT = 'Build a guestbook called PROMPT-TOKEN-7731 with "quotes", $HOME and `id`.\nThen stop.\n'
PI_TIMEOUT = 180.0


@dataclass
class AgentVM:
    platform: Platform
    alice: SSHUser

    def in_vm(self, command: str) -> Result:
        return self.platform.ssh(self.alice, command, login=VM)

    def output(self, command: str) -> str:
        result = self.in_vm(command)
        assert result.status == 0, f"{command}: {result.stderr}"
        return result.stdout

    def terminal(self) -> Terminal:
        argv = self.platform.ssh_argv(self.alice, VM, tty=True)
        return Terminal(self.platform.ns, self.platform.workdir, argv, width=120, height=40)


@pytest.fixture(scope="module")
def agent_vm(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentVM]:
    require_root()
    require_image()
    failed_before = request.session.testsfailed
    # The image is about three times the size of the plain one, and pi starts at its first boot.
    extra_env = {"USSYCODE_BOOT_TIMEOUT": "480"}
    with Platform(tmp_path_factory.mktemp("agents"), extra_env=extra_env) as platform:
        alice = platform.make_user("alice")
        assert platform.ssh(alice, "whoami").status == 0
        yield AgentVM(platform, alice)
        if request.session.testsfailed > failed_before:
            platform.keep_logs("test_agents")


def test_new_with_prompt(agent_vm: AgentVM) -> None:
    started = time.monotonic()
    # 1 GiB, the server's usual default: Node.js and pi need more than the tests' 512 MiB.
    argv = ["new", "--name", VM, "--memory", "1G", "--prompt", "-", "--json"]
    result = agent_vm.platform.ssh(agent_vm.alice, argv, stdin=PROMPT)
    assert result.status == 0, result.stderr + agent_vm.platform.log_tail()
    print(f"new --prompt: {time.monotonic() - started:.1f} s")
    assert json.loads(result.stdout)["state"] == "running"


def test_image_toolchains_and_agents(agent_vm: AgentVM) -> None:
    versions = agent_vm.output(
        # pi prints its version on stderr.
        "pi --version 2>&1; opencode --version; node --version; npm --version; go version;"
        " python3 -m pip --version; tmux -V; gcc --version | head -n 1"
    )
    print(versions)
    lines = versions.splitlines()
    assert lines[0].strip() == "0.73.1"
    assert lines[1].strip() == "1.18.33"
    assert lines[2].startswith("v24.")
    assert lines[4].startswith("go version go1.23")
    assert lines[5].startswith("pip ")
    assert lines[6].startswith("tmux 3.")
    assert lines[7].startswith("gcc ")
    agent_vm.output("python3 -m venv /tmp/venv && /tmp/venv/bin/pip --version")


def test_agents_md_and_gateway_settings(agent_vm: AgentVM) -> None:
    for link in (".pi/agent/AGENTS.md", ".config/opencode/AGENTS.md"):
        assert agent_vm.output(f"readlink ~/{link}").strip() == "/etc/ussycode/AGENTS.md"
    assert "0.0.0.0:8080" in agent_vm.output("cat /etc/ussycode/AGENTS.md")

    # A login shell sets the gateway defaults and writes the agents' settings.
    env = agent_vm.output(
        "bash -lc 'echo $OPENAI_BASE_URL; echo $USSYCODE_AGENT_ON_LOGIN; echo $USSYCODE_PUBLIC_URL'"
    )
    base_url, on_login, public_url = env.splitlines()
    assert base_url == "http://169.254.169.254/gateway/llm/openai/v1"
    assert on_login == "1"
    assert public_url == f"https://{VM}.ussy.localhost"
    models = json.loads(agent_vm.output("bash -lc 'cat ~/.pi/agent/models.json'"))
    assert models["providers"]["anthropic"]["baseUrl"] == "http://169.254.169.254/gateway/llm/anthropic"


def pi_running(agent_vm: AgentVM) -> bool:
    """Return whether a pi process of user ussycode runs (pi sets its process title to "pi")."""
    lines = agent_vm.output("ps -u ussycode -o args=").splitlines()
    return any(line.split()[:1] == ["pi"] or "/usr/local/bin/pi" in line for line in lines)


def agent_screen(agent_vm: AgentVM) -> str:
    result = agent_vm.in_vm("tmux capture-pane -p -J -S -200 -t agent")
    return result.stdout if result.status == 0 else ""


def test_prompt_starts_pi_in_tmux(agent_vm: AgentVM) -> None:
    wait_until(lambda: agent_vm.in_vm("tmux has-session -t agent").status == 0, 120, 'tmux session "agent"')
    wait_until(lambda: "PROMPT-TOKEN-7731" in agent_screen(agent_vm), PI_TIMEOUT, "the prompt in pi's screen")
    screen = agent_screen(agent_vm)
    # pi renders the message as Markdown, so the backticks may not show.
    assert '"quotes", $HOME and' in screen, screen
    assert pi_running(agent_vm)
    assert agent_vm.output("stat -c '%U %a' /var/lib/ussycode/agent-prompt").strip() == "ussycode 600"
    assert agent_vm.output("cat /var/lib/ussycode/agent-prompt") == PROMPT


def test_login_attaches_to_agent_session(agent_vm: AgentVM) -> None:
    with agent_vm.terminal() as term:
        term.wait_for("PROMPT-TOKEN-7731", timeout=90)
        # Detach from tmux (prefix Ctrl-B, then d): the login continues in a normal shell.
        term._tmux("send-keys", "-t", "0", "C-b", "d")
        term.wait_for("[detached", timeout=30)
        term.line("echo shell-$((6 * 7))")
        term.wait_for("shell-42", timeout=30)
    assert agent_vm.in_vm("tmux has-session -t agent").status == 0


def test_login_starts_pi(agent_vm: AgentVM) -> None:
    agent_vm.output("tmux kill-session -t agent")
    with agent_vm.terminal() as term:
        term.wait_for("Starting pi", timeout=90)
        wait_until(lambda: pi_running(agent_vm), PI_TIMEOUT, "pi to run")
        # Once pi shows its key help, Ctrl-C clears its editor and Ctrl-D quits pi, and the
        # login shell takes over. Keys sent earlier could reach bash, where Ctrl-D logs out.
        term.wait_for("clear/exit", timeout=PI_TIMEOUT)
        term.press("ctrl-c")
        term.press("ctrl-d")
        wait_until(lambda: not pi_running(agent_vm), 60, "pi to quit")
        assert "not found. Downloading" not in term.screen()
        term.line("echo shell-$((6 * 7))")
        term.wait_for("shell-42", timeout=30)


def test_setting_off_gives_shell(agent_vm: AgentVM) -> None:
    platform = agent_vm.platform
    changed = platform.ssh(agent_vm.alice, "settings agent-on-login off")
    assert changed.status == 0, changed.stderr
    restarted = platform.ssh(agent_vm.alice, f"restart {VM} --json")
    assert restarted.status == 0, restarted.stderr + platform.log_tail()

    assert agent_vm.output("bash -lc 'echo $USSYCODE_AGENT_ON_LOGIN'").strip() == "0"
    # The prompt is sent at the first boot only.
    assert agent_vm.in_vm("tmux has-session -t agent").status != 0
    with agent_vm.terminal() as term:
        term.line("echo shell-$((6 * 7))")
        term.wait_for("shell-42", timeout=60)
        assert "Starting pi" not in term.screen()
    assert not pi_running(agent_vm)
