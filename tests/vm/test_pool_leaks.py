"""A VM handed out by the warm pool keeps nothing of its time in the pool, and its LLM gateway
requests count for its new owner."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import FAILED, require_image, require_root
from tests.framework.platform import Platform, wait_until
from tests.vm.test_pool import POOL_FILL_SECONDS, pool_rows, rows

pytestmark = [pytest.mark.vm, pytest.mark.netns]


@pytest.fixture
def pool_of_one(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Platform]:
    require_root()
    require_image()
    with Platform(tmp_path, extra_env={"USSYCODE_POOL_SIZE": "1", "USSYCODE_POOL_MAX": "1"}) as running:
        yield running
        if request.node.stash.get(FAILED, False):
            running.keep_logs(request.node.name)


def test_pool_hand_out_leaves_no_pool_identity(pool_of_one: Platform) -> None:
    platform = pool_of_one
    erin = platform.make_user("erin")

    def ready() -> bool:
        return "pool VM ready" in platform.log_path.read_text()

    wait_until(ready, POOL_FILL_SECONDS, "a ready pool VM", interval=3)
    [pooled] = pool_rows(platform)
    pool_name = str(pooled["name"])

    made = platform.ssh(erin, ["new", "--name", "erin-vm", "--json"])
    assert made.status == 0, made.stderr + platform.log_tail()
    assert rows(platform, "SELECT id FROM vms WHERE name = 'erin-vm'")[0]["id"] == pooled["id"]

    # Nothing in the guest names the pool VM or its hostname any more.
    pool_hostname = f"pool-{pooled['id']}"
    found = platform.ssh(
        erin,
        f"sudo grep -rlsF -e {pool_name} -e {pool_hostname} /etc /home /root /run/ussycode; echo status=$?",
        login="erin-vm",
    )
    assert found.stdout.splitlines()[-1] == "status=1", found.stdout
    env = platform.ssh(erin, "bash -lc 'echo $USSYCODE_VM_NAME $OPENAI_BASE_URL'", login="erin-vm")
    assert env.stdout.split() == ["erin-vm", "http://169.254.169.254/gateway/llm/openai/v1"]

    # The gateway knows the VM as erin's: without keys, its error names her, not the pool's user.
    reply = platform.ssh(
        erin, "curl -sS http://169.254.169.254/gateway/llm/openai/v1/models", login="erin-vm"
    )
    message = json.loads(reply.stdout)["error"]["message"]
    assert "_pool" not in message
    assert "vm=erin-vm user=erin llm" in platform.log_path.read_text()
