"""VM lifecycle edge cases through the gateway: a boot that times out leaves nothing behind."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.conftest import require_image, require_root
from tests.framework.platform import Platform

pytestmark = [pytest.mark.vm, pytest.mark.netns]


def test_new_boot_timeout_leaves_nothing(tmp_path: Path) -> None:
    require_root()
    require_image()
    with Platform(tmp_path, extra_env={"USSYCODE_BOOT_TIMEOUT": "3"}) as platform:
        alice = platform.make_user("alice")
        result = platform.ssh(alice, "new --name slow-owl")
        assert result.status == 1
        assert 'vm "slow-owl" did not respond on SSH within 3 s' in result.stderr
        assert "booting" in result.stderr
        assert json.loads(platform.ssh(alice, "ls --json").stdout) == []
        assert list(platform.data_dir.glob("vms/*")) == []
        links = platform.ns.run(["ip", "-o", "link", "show"]).stdout
        assert "ussyt" not in links
        qemu = [
            pid for pid in platform.ns.pids_inside() if b"qemu" in Path(f"/proc/{pid}/cmdline").read_bytes()
        ]
        assert qemu == []
        again = platform.ssh(alice, "whoami")
        assert again.status == 0
    assert os.path.exists(tmp_path / "serve.log")
