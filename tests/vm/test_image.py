"""Tests of the guest image: recipe hashing, manifests, the build cache, the boot agent, and a
real boot of the built image under QEMU in a network namespace."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.framework.netns import NetNS, end_pid
from ussycode.errors import InvalidInput, RuntimeFailure
from ussycode.vm import image
from ussycode.vm.image import ImageManifest, build_image, find_image, list_images, recipe_hash

GiB = 1024**3
HERE = Path(__file__).parent
DEFAULT_TEST_IMAGE_DIR = "/var/cache/ussycode-test/images"

BAD_NAMES = ["", "Ussy", "ussy_yuntu", "-ussy", "ussy-", "a" * 64, "../etc", "ussy yuntu", "ussy.1"]
BAD_SUITES = ["", "Bookworm", "bookworm/updates", "../x", "book worm", "1bookworm"]
BAD_MIRRORS = ["", "deb.debian.org/debian", "ftp://deb.debian.org/debian", "http://", "http://a b/"]


def load_guest_agent() -> ModuleType:
    """Import the boot agent from its file, because it is a guest script, not a package module."""
    path = image.GUEST_DIR / "ussycode_init.py"
    spec = importlib.util.spec_from_file_location("ussycode_init", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["ussycode_init"] = module
    spec.loader.exec_module(module)
    return module


agent = load_guest_agent()


def fake_build(image_dir: Path, name: str, digest: str, created_at: str) -> ImageManifest:
    """Write a complete build with placeholder files, as build_image would leave it."""
    directory = image_dir / name / digest
    directory.mkdir(parents=True)
    for file_name in (image.ROOTFS_FILE, image.KERNEL_FILE, image.INITRD_FILE):
        (directory / file_name).write_bytes(b"placeholder")
    manifest = ImageManifest(
        name=name,
        recipe_hash=digest,
        suite="bookworm",
        mirror=image.DEFAULT_MIRROR,
        directory=directory,
        rootfs=directory / image.ROOTFS_FILE,
        kernel=directory / image.KERNEL_FILE,
        initrd=directory / image.INITRD_FILE,
        rootfs_size_bytes=2 * GiB,
        created_at=created_at,
        kernel_cmdline=image.KERNEL_CMDLINE,
    )
    (directory / image.MANIFEST_FILE).write_text(json.dumps(manifest.to_json()))
    return manifest


@pytest.fixture
def guest_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the guest directory that recipe_hash reads instead of the real one."""
    copy = tmp_path / "guest"
    shutil.copytree(image.GUEST_DIR, copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(image, "GUEST_DIR", copy)
    return copy


# Recipe hash


def test_recipe_hash_stable() -> None:
    first = recipe_hash("ussyuntu", "bookworm", image.DEFAULT_MIRROR)
    second = recipe_hash("ussyuntu", "bookworm", image.DEFAULT_MIRROR)
    assert first == second
    assert len(first) == 64
    assert int(first, 16) >= 0


@pytest.mark.parametrize(
    ("name", "suite", "mirror"),
    [
        ("other", "bookworm", image.DEFAULT_MIRROR),
        ("ussyuntu", "trixie", image.DEFAULT_MIRROR),
        ("ussyuntu", "bookworm", "http://mirror.example/debian"),
        ("ussyuntu", "noble", "http://archive.ubuntu.com/ubuntu"),
    ],
)
def test_recipe_hash_inputs_change_it(name: str, suite: str, mirror: str) -> None:
    base = recipe_hash("ussyuntu", "bookworm", image.DEFAULT_MIRROR)
    assert recipe_hash(name, suite, mirror) != base


def test_recipe_hash_guest_file_edit(guest_copy: Path) -> None:
    before = recipe_hash("ussyuntu", "bookworm", image.DEFAULT_MIRROR)
    sudoers = guest_copy / "sudoers"
    sudoers.write_text(sudoers.read_text() + "# edited\n")
    assert recipe_hash("ussyuntu", "bookworm", image.DEFAULT_MIRROR) != before


def test_recipe_hash_guest_file_added(guest_copy: Path) -> None:
    before = recipe_hash("ussyuntu", "bookworm", image.DEFAULT_MIRROR)
    (guest_copy / "extra.conf").write_text("")
    assert recipe_hash("ussyuntu", "bookworm", image.DEFAULT_MIRROR) != before


def test_recipe_hash_guest_file_renamed(guest_copy: Path) -> None:
    before = recipe_hash("ussyuntu", "bookworm", image.DEFAULT_MIRROR)
    (guest_copy / "fstab").rename(guest_copy / "fstab.renamed")
    assert recipe_hash("ussyuntu", "bookworm", image.DEFAULT_MIRROR) != before


def test_recipe_hash_ignores_bytecode(guest_copy: Path) -> None:
    before = recipe_hash("ussyuntu", "bookworm", image.DEFAULT_MIRROR)
    (guest_copy / "__pycache__").mkdir()
    (guest_copy / "__pycache__" / "ussycode_init.cpython-311.pyc").write_bytes(b"\0")
    assert recipe_hash("ussyuntu", "bookworm", image.DEFAULT_MIRROR) == before


def test_recipe_hash_recipe_version(monkeypatch: pytest.MonkeyPatch) -> None:
    before = recipe_hash("ussyuntu", "bookworm", image.DEFAULT_MIRROR)
    monkeypatch.setattr(image, "RECIPE_VERSION", image.RECIPE_VERSION + 1)
    assert recipe_hash("ussyuntu", "bookworm", image.DEFAULT_MIRROR) != before


def test_recipe_hash_packages(monkeypatch: pytest.MonkeyPatch) -> None:
    before = recipe_hash("ussyuntu", "bookworm", image.DEFAULT_MIRROR)
    monkeypatch.setattr(image, "PACKAGES", (*image.PACKAGES, "htop"))
    assert recipe_hash("ussyuntu", "bookworm", image.DEFAULT_MIRROR) != before


# Input checks


@pytest.mark.parametrize("name", BAD_NAMES)
def test_recipe_hash_bad_name(name: str) -> None:
    with pytest.raises(InvalidInput, match="invalid image name"):
        recipe_hash(name, "bookworm", image.DEFAULT_MIRROR)


@pytest.mark.parametrize("suite", BAD_SUITES)
def test_recipe_hash_bad_suite(suite: str) -> None:
    with pytest.raises(InvalidInput, match="invalid suite"):
        recipe_hash("ussyuntu", suite, image.DEFAULT_MIRROR)


@pytest.mark.parametrize("mirror", BAD_MIRRORS)
def test_recipe_hash_bad_mirror(mirror: str) -> None:
    with pytest.raises(InvalidInput, match="invalid mirror"):
        recipe_hash("ussyuntu", "bookworm", mirror)


@pytest.mark.parametrize("name", BAD_NAMES)
def test_build_image_bad_name(tmp_path: Path, name: str) -> None:
    with pytest.raises(InvalidInput, match="invalid image name"):
        build_image(tmp_path / "images", name=name)
    assert not (tmp_path / "images").exists()


@pytest.mark.parametrize("suite", BAD_SUITES)
def test_build_image_bad_suite(tmp_path: Path, suite: str) -> None:
    with pytest.raises(InvalidInput, match="invalid suite"):
        build_image(tmp_path / "images", suite=suite)
    assert not (tmp_path / "images").exists()


@pytest.mark.parametrize("mirror", BAD_MIRRORS)
def test_build_image_bad_mirror(tmp_path: Path, mirror: str) -> None:
    with pytest.raises(InvalidInput, match="invalid mirror"):
        build_image(tmp_path / "images", mirror=mirror)
    assert not (tmp_path / "images").exists()


@pytest.mark.parametrize("name", BAD_NAMES)
def test_find_image_bad_name(tmp_path: Path, name: str) -> None:
    with pytest.raises(InvalidInput, match="invalid image name"):
        find_image(tmp_path, name)


def test_name_valid_examples() -> None:
    for name in ("ussyuntu", "a", "deb-12", "x" * 63):
        image.check_name(name)


# Recipe contents


def test_package_list_debian_kernel() -> None:
    packages = image.package_list("bookworm")
    assert image.DEBIAN_KERNEL in packages
    assert image.UBUNTU_KERNEL not in packages


def test_package_list_ubuntu_kernel() -> None:
    packages = image.package_list("noble")
    assert image.UBUNTU_KERNEL in packages
    assert image.DEBIAN_KERNEL not in packages


def test_mirror_lines_debian_security() -> None:
    lines = image.mirror_lines("bookworm", image.DEFAULT_MIRROR)
    assert lines[0] == "deb http://deb.debian.org/debian bookworm main"
    assert "deb http://deb.debian.org/debian bookworm-updates main" in lines
    assert "deb http://deb.debian.org/debian-security bookworm-security main" in lines


def test_mirror_lines_own_debian_mirror() -> None:
    lines = image.mirror_lines("bookworm", "http://mirror.example/debian")
    assert lines == [
        "deb http://mirror.example/debian bookworm main",
        "deb http://mirror.example/debian bookworm-updates main",
    ]


def test_mirror_lines_ubuntu_pockets() -> None:
    lines = image.mirror_lines("noble", "http://archive.ubuntu.com/ubuntu")
    assert lines == [
        "deb http://archive.ubuntu.com/ubuntu noble main universe",
        "deb http://archive.ubuntu.com/ubuntu noble-updates main universe",
        "deb http://archive.ubuntu.com/ubuntu noble-security main universe",
    ]


def test_mirror_lines_sid_alone() -> None:
    assert image.mirror_lines("sid", image.DEFAULT_MIRROR) == ["deb http://deb.debian.org/debian sid main"]


# Manifest


def test_manifest_round_trip(tmp_path: Path) -> None:
    manifest = fake_build(tmp_path, "ussyuntu", "ab" * 32, "2026-12-01T10:00:00.000000Z")
    data = json.loads(json.dumps(manifest.to_json()))
    assert ImageManifest.from_json(data, manifest.directory) == manifest


def test_manifest_paths_relative(tmp_path: Path) -> None:
    manifest = fake_build(tmp_path, "ussyuntu", "ab" * 32, "2026-12-01T10:00:00.000000Z")
    data = manifest.to_json()
    assert data["rootfs"] == "rootfs.ext4"
    assert data["kernel"] == "vmlinuz"
    assert data["initrd"] == "initrd.img"


def test_manifest_moved_directory(tmp_path: Path) -> None:
    manifest = fake_build(tmp_path, "ussyuntu", "ab" * 32, "2026-12-01T10:00:00.000000Z")
    moved = ImageManifest.from_json(manifest.to_json(), tmp_path / "elsewhere")
    assert moved.rootfs == tmp_path / "elsewhere" / "rootfs.ext4"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"name": None}, "'name' is missing"),
        ({"kernel_cmdline": 5}, "'kernel_cmdline' is missing or not a string"),
        ({"rootfs_size_bytes": "2G"}, "rootfs_size_bytes must be a positive integer"),
        ({"rootfs_size_bytes": True}, "rootfs_size_bytes must be a positive integer"),
        ({"rootfs_size_bytes": 0}, "rootfs_size_bytes must be a positive integer"),
        ({"rootfs": "/etc/shadow"}, "must be a file name inside the build directory"),
        ({"kernel": "../other/vmlinuz"}, "must be a file name inside the build directory"),
        ({"initrd": ""}, "must be a file name inside the build directory"),
    ],
)
def test_manifest_from_json_invalid(tmp_path: Path, change: dict[str, Any], message: str) -> None:
    manifest = fake_build(tmp_path, "ussyuntu", "ab" * 32, "2026-12-01T10:00:00.000000Z")
    data = manifest.to_json()
    for key, value in change.items():
        if value is None:
            del data[key]
        else:
            data[key] = value
    with pytest.raises(InvalidInput, match=message):
        ImageManifest.from_json(data, manifest.directory)


def test_manifest_from_json_not_object(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="not a JSON object"):
        ImageManifest.from_json(["name"], tmp_path)


# Finding builds


def test_find_image_none(tmp_path: Path) -> None:
    assert find_image(tmp_path, "ussyuntu") is None
    assert find_image(tmp_path / "missing", "ussyuntu") is None


def test_find_image_newest(tmp_path: Path) -> None:
    fake_build(tmp_path, "ussyuntu", "aa" * 32, "2026-12-01T10:00:00.000000Z")
    newer = fake_build(tmp_path, "ussyuntu", "bb" * 32, "2026-12-02T10:00:00.000000Z")
    assert find_image(tmp_path, "ussyuntu") == newer


def test_find_image_ignores_incomplete(tmp_path: Path) -> None:
    complete = fake_build(tmp_path, "ussyuntu", "aa" * 32, "2026-12-01T10:00:00.000000Z")
    # Newer, but each is missing something that a finished build has.
    no_manifest = fake_build(tmp_path, "ussyuntu", "bb" * 32, "2026-12-02T10:00:00.000000Z")
    (no_manifest.directory / image.MANIFEST_FILE).unlink()
    no_rootfs = fake_build(tmp_path, "ussyuntu", "cc" * 32, "2026-12-03T10:00:00.000000Z")
    no_rootfs.rootfs.unlink()
    bad_json = fake_build(tmp_path, "ussyuntu", "dd" * 32, "2026-12-04T10:00:00.000000Z")
    (bad_json.directory / image.MANIFEST_FILE).write_text('{"name": "ussyuntu", ')
    staging = fake_build(tmp_path, "ussyuntu", "ee" * 32, "2026-12-05T10:00:00.000000Z")
    staging.directory.rename(tmp_path / "ussyuntu" / ".build-eeeeeeeeeeee-0000")

    assert find_image(tmp_path, "ussyuntu") == complete


def test_find_image_other_name(tmp_path: Path) -> None:
    fake_build(tmp_path, "other", "aa" * 32, "2026-12-01T10:00:00.000000Z")
    assert find_image(tmp_path, "ussyuntu") is None


def test_list_images_all_names(tmp_path: Path) -> None:
    older = fake_build(tmp_path, "ussyuntu", "aa" * 32, "2026-12-01T10:00:00.000000Z")
    newer = fake_build(tmp_path, "ussyuntu", "bb" * 32, "2026-12-02T10:00:00.000000Z")
    other = fake_build(tmp_path, "deb-test", "cc" * 32, "2026-12-03T10:00:00.000000Z")
    (tmp_path / "ussyuntu" / "dd").mkdir()
    (tmp_path / "not a name").mkdir()
    assert list_images(tmp_path) == [other, newer, older]


def test_list_images_missing_dir(tmp_path: Path) -> None:
    assert list_images(tmp_path / "missing") == []


# The build cache


def test_build_image_cached(tmp_path: Path) -> None:
    digest = recipe_hash(image.DEFAULT_IMAGE, image.DEFAULT_SUITE, image.DEFAULT_MIRROR)
    existing = fake_build(tmp_path, image.DEFAULT_IMAGE, digest, "2026-12-01T10:00:00.000000Z")
    messages: list[str] = []
    started = time.monotonic()
    result = build_image(tmp_path, progress=messages.append)
    elapsed = time.monotonic() - started
    assert result == existing
    assert elapsed < 0.5
    assert messages == []


@pytest.mark.skipif(os.geteuid() != 0, reason="mmdebstrap --mode=unshare as root")
def test_build_image_failure_leaves_nothing(tmp_path: Path) -> None:
    stale = tmp_path / "ussyuntu" / ".build-000000000000-dead"
    stale.mkdir(parents=True)
    (stale / "rootfs.ext4").write_bytes(b"partial")
    mirror = f"file://{tmp_path}/no-such-mirror"
    messages: list[str] = []

    with pytest.raises(RuntimeFailure, match="mmdebstrap failed") as caught:
        build_image(tmp_path, mirror=mirror, progress=messages.append)

    assert caught.value.output
    assert messages
    assert sorted(p.name for p in (tmp_path / "ussyuntu").iterdir()) == [".lock"]
    assert find_image(tmp_path, "ussyuntu") is None


# The boot agent's parsing


def test_agent_parse_cmdline() -> None:
    params = agent.parse_cmdline(
        "root=/dev/vda rw console=ttyS0 ussy.ip=10.0.0.2/24 ussy.gw=10.0.0.1 ussy.dns=1.1.1.1,9.9.9.9"
    )
    assert params["root"] == "/dev/vda"
    assert params["rw"] == ""
    assert params["ussy.ip"] == "10.0.0.2/24"


def test_agent_parse_network() -> None:
    params = {"ussy.ip": "10.0.0.2/24", "ussy.gw": "10.0.0.1", "ussy.dns": "1.1.1.1,9.9.9.9"}
    config = agent.parse_network(params)
    assert str(config.interface) == "10.0.0.2/24"
    assert str(config.gateway) == "10.0.0.1"
    assert [str(server) for server in config.nameservers] == ["1.1.1.1", "9.9.9.9"]


def test_agent_parse_network_no_dns() -> None:
    config = agent.parse_network({"ussy.ip": "10.0.0.2/24", "ussy.gw": "10.0.0.1"})
    assert config.nameservers == ()


@pytest.mark.parametrize(
    "params",
    [
        {"ussy.gw": "10.0.0.1"},
        {"ussy.ip": "10.0.0.2/24"},
        {"ussy.ip": "10.0.0.2", "ussy.gw": "10.0.0.1"},
        {"ussy.ip": "10.0.0.300/24", "ussy.gw": "10.0.0.1"},
        {"ussy.ip": "10.0.0.2/24", "ussy.gw": "gateway"},
        {"ussy.ip": "10.0.0.2/24", "ussy.gw": "10.0.0.1", "ussy.dns": "1.1.1.1,dns"},
    ],
)
def test_agent_parse_network_invalid(params: dict[str, str]) -> None:
    with pytest.raises(ValueError):
        agent.parse_network(params)


VALID_METADATA: dict[str, Any] = {
    "name": "mild-owl",
    "hostname": "mild-owl",
    "instance_id": "vm-0001",
    "owner": "alice",
    "ssh_keys": ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExample alice@laptop"],
    "env": {"GREETING": "hello world"},
}


def test_agent_parse_metadata() -> None:
    metadata = agent.parse_metadata(VALID_METADATA)
    assert metadata.hostname == "mild-owl"
    assert metadata.ssh_keys == tuple(VALID_METADATA["ssh_keys"])
    assert metadata.env == {"GREETING": "hello world"}


def test_agent_parse_metadata_drops_bad_entries() -> None:
    data: dict[str, Any] = dict(VALID_METADATA)
    data["ssh_keys"] = ["ssh-ed25519 AAAA good", "ssh-rsa AAAA\nssh-rsa BBBB", "", 5]
    data["env"] = {"GOOD": "1", "BAD-NAME": "x", "MULTI": "a\nb", "NUMBER": 5}
    metadata = agent.parse_metadata(data)
    assert metadata.ssh_keys == ("ssh-ed25519 AAAA good",)
    assert metadata.env == {"GOOD": "1"}


def test_agent_parse_metadata_setup_script() -> None:
    with_script = agent.parse_metadata({**VALID_METADATA, "setup_script": "apt-get update\n"})
    assert with_script.setup_script == "apt-get update\n"
    assert agent.parse_metadata(VALID_METADATA).setup_script is None


@pytest.mark.parametrize("script", ["", "  \n", 5, ["echo"]])
def test_agent_parse_metadata_bad_setup_script(script: Any) -> None:
    metadata = agent.parse_metadata({**VALID_METADATA, "setup_script": script})
    assert metadata.setup_script is None
    assert metadata.ssh_keys == tuple(VALID_METADATA["ssh_keys"])


def test_agent_parse_metadata_agent_prompt() -> None:
    with_prompt = agent.parse_metadata({**VALID_METADATA, "agent_prompt": "build a blog\n"})
    assert with_prompt.agent_prompt == "build a blog\n"
    assert agent.parse_metadata(VALID_METADATA).agent_prompt is None


@pytest.mark.parametrize("prompt", ["", " \n", 5, ["hi"]])
def test_agent_parse_metadata_bad_agent_prompt(prompt: Any) -> None:
    metadata = agent.parse_metadata({**VALID_METADATA, "agent_prompt": prompt})
    assert metadata.agent_prompt is None
    assert metadata.ssh_keys == tuple(VALID_METADATA["ssh_keys"])


def test_agent_parse_metadata_bad_hostname() -> None:
    metadata = agent.parse_metadata({**VALID_METADATA, "hostname": "Not_A_Host"})
    assert metadata.hostname == ""
    assert metadata.ssh_keys == tuple(VALID_METADATA["ssh_keys"])


@pytest.mark.parametrize(
    "data",
    [
        [],
        {**VALID_METADATA, "name": None},
        {key: value for key, value in VALID_METADATA.items() if key != "owner"},
        {**VALID_METADATA, "ssh_keys": "ssh-ed25519 AAAA"},
        {**VALID_METADATA, "env": ["A=1"]},
    ],
)
def test_agent_parse_metadata_invalid(data: Any) -> None:
    with pytest.raises(agent.MetadataError):
        agent.parse_metadata(data)


@pytest.mark.parametrize(
    ("hostname", "valid"),
    [
        ("mild-owl", True),
        ("vm1.example.com", True),
        ("a" * 63, True),
        ("a" * 64, False),
        ("", False),
        ("-owl", False),
        ("owl-", False),
        ("Owl", False),
        ("owl..x", False),
    ],
)
def test_agent_valid_hostname(hostname: str, valid: bool) -> None:
    assert agent.valid_hostname(hostname) is valid


def test_agent_render_profile_quotes(tmp_path: Path) -> None:
    env = {"PLAIN": "hello world", "TRICKY": 'it\'s $HOME `id` "x" \\n'}
    profile = tmp_path / "ussycode.sh"
    profile.write_text(agent.render_profile(env))
    script = f'. {profile}; printf "%s\\n%s" "$PLAIN" "$TRICKY"'
    output = subprocess.run(
        ["bash", "--norc", "-c", script], capture_output=True, text=True, check=True
    ).stdout
    assert output == "hello world\n" + env["TRICKY"]


def test_agent_render_environment() -> None:
    text = agent.render_environment({"B": "2", "A": "one two"})
    assert text.splitlines()[1:] == ['A="one two"', 'B="2"']


# Booting the image


@dataclasses.dataclass
class GuestLab:
    """A namespace with a bridge, a TAP, a metadata stand-in and one guest disk."""

    ns: NetNS
    workdir: Path
    manifest: ImageManifest
    disk: Path
    key: Path
    vm_json: Path
    host_keys: Path
    setup_log: Path
    known_hosts: Path
    qemu: subprocess.Popen[bytes] | None = None
    metadata: subprocess.Popen[bytes] | None = None
    boot_number: int = 0

    guest_ip = "10.77.0.2"
    gateway_ip = "10.77.0.1"

    def start_metadata(self) -> None:
        ready = self.workdir / "metadata.ready"
        ready.unlink(missing_ok=True)
        log = (self.workdir / "metadata.log").open("ab")
        self.metadata = self.ns.popen(
            [
                sys.executable,
                str(HERE / "metadata_stub.py"),
                "--vm-json",
                str(self.vm_json),
                "--host-keys",
                str(self.host_keys),
                "--setup-log",
                str(self.setup_log),
                "--ready",
                str(ready),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 15
        while not ready.exists():
            assert self.metadata.poll() is None, (self.workdir / "metadata.log").read_text()
            assert time.monotonic() < deadline, "metadata stand-in did not start in 15 s"
            time.sleep(0.05)

    def stop_metadata(self) -> None:
        if self.metadata is not None:
            end_pid(self.metadata.pid)
            self.metadata.wait(timeout=10)
            self.metadata = None

    def console_path(self) -> Path:
        return self.workdir / f"console-{self.boot_number}.log"

    def boot(self) -> float:
        """Start QEMU and return the seconds from launch to the SSH banner."""
        self.boot_number += 1
        pidfile = self.workdir / "qemu.pid"
        pidfile.unlink(missing_ok=True)
        cmdline = (
            f"{self.manifest.kernel_cmdline} ussy.ip={self.guest_ip}/24"
            f" ussy.gw={self.gateway_ip} ussy.dns={self.gateway_ip}"
        )
        argv = [
            "qemu-system-x86_64",
            "-accel", "tcg",
            "-M", "pc",
            "-cpu", "max",
            "-smp", "2",
            "-m", "1024",
            "-nodefaults",
            "-no-user-config",
            "-display", "none",
            "-no-reboot",
            "-serial", f"file:{self.console_path()}",
            "-pidfile", str(pidfile),
            "-kernel", str(self.manifest.kernel),
            "-initrd", str(self.manifest.initrd),
            "-append", cmdline,
            "-drive", f"file={self.disk},if=virtio,format=qcow2",
            "-netdev", "tap,id=net0,ifname=tap0,script=no,downscript=no",
            "-device", "virtio-net-pci,netdev=net0,mac=52:54:00:77:00:02",
            "-device", "virtio-rng-pci",
        ]  # fmt: skip
        qemu_log = (self.workdir / "qemu.log").open("ab")
        started = time.monotonic()
        self.qemu = self.ns.popen(argv, stdout=qemu_log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while not pidfile.exists():
            assert self.qemu.poll() is None, (self.workdir / "qemu.log").read_text()
            assert time.monotonic() < deadline, "QEMU wrote no pidfile in 10 s"
            time.sleep(0.05)
        self.ns.extra_pids.append(int(pidfile.read_text().strip()))

        probe = self.ns.run(
            [sys.executable, str(HERE / "wait_ssh_banner.py"), self.guest_ip, "--timeout", "300"],
            check=False,
            timeout=320,
        )
        elapsed = time.monotonic() - started
        assert probe.returncode == 0, probe.stdout + self.console_tail()
        return elapsed

    def console_tail(self) -> str:
        path = self.console_path()
        text = path.read_text(errors="replace") if path.exists() else ""
        return "\n--- console tail ---\n" + text[-4000:]

    def ssh(self, command: str, *, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        argv = [
            "ssh", "-F", "/dev/null",
            "-i", str(self.key),
            "-o", "StrictHostKeyChecking=no",
            "-o", f"UserKnownHostsFile={self.known_hosts}",
            "-o", "BatchMode=yes",
            "-o", "ConnectTimeout=10",
            "-o", "LogLevel=ERROR",
            f"ussycode@{self.guest_ip}",
            command,
        ]  # fmt: skip
        return self.ns.run(argv, check=False, timeout=timeout)

    def wait_for_login(self, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        deadline = time.monotonic() + timeout
        while True:
            result = self.ssh("true")
            if result.returncode == 0 or time.monotonic() > deadline:
                return result
            time.sleep(1)

    def poweroff(self) -> None:
        """Shut the guest down from inside and wait for QEMU to exit (-no-reboot)."""
        assert self.qemu is not None
        self.ssh("sudo systemctl poweroff", timeout=30)
        try:
            self.qemu.wait(timeout=120)
        except subprocess.TimeoutExpired:
            end_pid(self.qemu.pid)
            self.qemu.wait(timeout=10)
            pytest.fail("guest did not power off in 120 s" + self.console_tail())


@pytest.fixture(scope="session")
def built_image() -> ImageManifest:
    image_dir = Path(os.environ.get("USSYCODE_TEST_IMAGE_DIR", DEFAULT_TEST_IMAGE_DIR))
    return build_image(image_dir)


@pytest.fixture
def guest_lab(built_image: ImageManifest, tmp_path: Path) -> Iterator[GuestLab]:
    key = tmp_path / "testkey"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "image-test", "-f", str(key)],
        check=True,
    )
    vm_json = tmp_path / "vm.json"
    vm_json.write_text(
        json.dumps(
            {
                "name": "img-test",
                "hostname": "img-test",
                "instance_id": "vm-imagetest",
                "owner": "tester",
                "ssh_keys": [(tmp_path / "testkey.pub").read_text().strip()],
                "env": {
                    "USSY_TEST_VAR": "hello world",
                    "USSY_QUOTED": "it's $HOME",
                    "USSY_PLAIN": "plain-value",
                },
                "setup_script": SETUP_SCRIPT,
            }
        )
    )
    disk = tmp_path / "disk.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(built_image.rootfs),
         str(disk), "4G"],
        check=True,
    )  # fmt: skip

    with NetNS("image") as ns:
        ns.run(["ip", "link", "add", "br0", "type", "bridge"])
        ns.run(["ip", "address", "add", f"{GuestLab.gateway_ip}/24", "dev", "br0"])
        ns.run(["ip", "address", "add", "169.254.169.254/32", "dev", "br0"])
        ns.run(["ip", "link", "set", "br0", "up"])
        ns.run(["ip", "tuntap", "add", "dev", "tap0", "mode", "tap"])
        ns.run(["ip", "link", "set", "tap0", "master", "br0", "up"])
        lab = GuestLab(
            ns=ns,
            workdir=tmp_path,
            manifest=built_image,
            disk=disk,
            key=key,
            vm_json=vm_json,
            host_keys=tmp_path / "host-keys.jsonl",
            setup_log=tmp_path / "setup-log.jsonl",
            known_hosts=tmp_path / "known_hosts",
        )
        try:
            yield lab
        finally:
            if lab.qemu is not None and lab.qemu.poll() is None:
                end_pid(lab.qemu.pid)
            lab.stop_metadata()


SETUP_SCRIPT = 'echo "setup ran as $(id -un) in $PWD with $USSY_TEST_VAR"\ntouch setup-marker\n'


def read_records(path: Path) -> list[Any]:
    """Return the JSON lines that the metadata stand-in appended to `path`."""
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def key_blobs(lines: list[str]) -> set[tuple[str, str]]:
    """Return (type, base64) of each OpenSSH public key line, without host names or comments."""
    blobs = set()
    for line in lines:
        fields = line.split()
        start = 0 if fields[0].startswith(("ssh-", "ecdsa-")) else 1
        blobs.add((fields[start], fields[start + 1]))
    return blobs


@pytest.mark.vm
@pytest.mark.netns
def test_image_boots_and_applies_metadata(guest_lab: GuestLab) -> None:
    lab = guest_lab
    lab.start_metadata()
    boot_seconds = lab.boot()
    print(f"\nfirst boot: launch to SSH banner in {boot_seconds:.1f} s")

    login = lab.wait_for_login()
    assert login.returncode == 0, login.stderr + lab.console_tail()
    assert lab.ssh("sudo -n true").returncode == 0
    assert lab.ssh("hostname").stdout.strip() == "img-test"
    assert lab.ssh("getent hosts img-test").stdout.split()[0] == "127.0.1.1"
    assert lab.ssh("cat /etc/resolv.conf").stdout.splitlines()[-1] == "nameserver 10.77.0.1"

    # pam_env sets these for every SSH session, and /etc/profile.d for login shells.
    assert lab.ssh("printenv USSY_TEST_VAR").stdout == "hello world\n"
    assert lab.ssh("printenv USSY_QUOTED").stdout == "it's $HOME\n"
    login_shell = lab.ssh("env -i bash -lc 'printf %s \"$USSY_TEST_VAR\"'")
    assert login_shell.stdout == "hello world"
    # Services started from now on get the manager's environment (systemd quotes odd values).
    manager_env = lab.ssh("sudo systemctl show-environment").stdout.splitlines()
    assert "USSY_PLAIN=plain-value" in manager_env

    authorized = lab.ssh("stat -c '%a %U' .ssh/authorized_keys").stdout.strip()
    assert authorized == "600 ussycode"

    # resize2fs runs after sshd may start, so wait for it.
    deadline = time.monotonic() + 120
    size = 0
    while time.monotonic() < deadline:
        result = lab.ssh("df -B1 --output=size / | tail -n 1")
        size = int(result.stdout.strip() or 0)
        if size > 3 * GiB:
            break
        time.sleep(2)
    assert size > 3 * GiB, f"root filesystem is {size} bytes" + lab.console_tail()

    posted = read_records(lab.host_keys)
    assert len(posted) == 1
    scan = lab.ns.run(["ssh-keyscan", "-T", "10", lab.guest_ip], check=False, timeout=60)
    presented = [line for line in scan.stdout.splitlines() if line and not line.startswith("#")]
    assert presented
    assert key_blobs(posted[0]["keys"]) == key_blobs(presented)

    assert lab.ssh("sudo systemctl is-active ussycode-init.service").stdout.strip() == "active"
    assert lab.ssh("sudo systemctl is-enabled systemd-networkd.service").stdout.strip() == "masked"
    failed = lab.ssh("sudo systemctl list-units --failed --no-legend --plain").stdout.strip()
    assert failed == ""
    assert lab.ssh("ls /etc/ssh/ssh_host_ed25519_key").returncode == 0
    assert "ussycode-init: ready, sshd may start" in lab.console_path().read_text(errors="replace")

    # Boot tuning: only the fast host key types, sshd ordered after the agent alone, and the
    # lighter boot that customize.sh and make-initramfs.sh set up.
    host_key_files = lab.ssh("ls /etc/ssh").stdout.split()
    assert sorted(name for name in host_key_files if name.endswith("_key")) == [
        "ssh_host_ecdsa_key",
        "ssh_host_ed25519_key",
    ]
    ssh_after = lab.ssh("sudo systemctl show --property=After --value ssh.service").stdout.split()
    assert "ussycode-init.service" in ssh_after
    assert "basic.target" not in ssh_after
    assert lab.ssh("test -e /run/nologin").returncode == 1
    assert lab.ssh("sudo systemctl is-enabled systemd-binfmt.service").stdout.strip() == "masked"
    generators = lab.ssh("readlink /etc/systemd/system-generators/systemd-sysv-generator").stdout
    assert generators.strip() == "/dev/null"
    assert "quiet" in lab.ssh("cat /proc/cmdline").stdout.split()
    # initramfs-tools' /init leaves /run/initramfs behind; the ussycode initramfs creates no /run.
    assert lab.ssh("test -e /run/initramfs").returncode == 1

    # The setup script runs after sshd may start, as ussycode in its home, and is reported.
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        reports = read_records(lab.setup_log)
        if reports and reports[-1]["status"] != "running":
            break
        time.sleep(2)
    assert reports[0]["status"] == "running"
    assert "exit_status" not in reports[0]
    assert reports[-1]["status"] == "succeeded"
    assert reports[-1]["exit_status"] == 0
    assert "setup ran as ussycode in /home/ussycode with hello world" in reports[-1]["output"]
    assert lab.ssh("stat -c %U setup-marker").stdout.strip() == "ussycode"

    report = "\n".join(
        lab.ssh(command).stdout
        for command in (
            "sudo systemd-analyze",
            "sudo systemd-analyze critical-chain ssh.service",
            "sudo systemd-analyze blame | head -n 15",
        )
    )
    (lab.workdir / "boot-report.txt").write_text(report)
    print(report)

    # Second boot without the metadata service: the saved identity applies again.
    lab.poweroff()
    lab.stop_metadata()
    second_boot = lab.boot()
    print(f"second boot without metadata: launch to SSH banner in {second_boot:.1f} s")
    assert lab.wait_for_login().returncode == 0
    assert lab.ssh("hostname").stdout.strip() == "img-test"
    assert lab.ssh("printenv USSY_TEST_VAR").stdout == "hello world\n"
    console = lab.console_path().read_text(errors="replace")
    assert "ussycode-init: using the metadata saved by an earlier boot" in console
    assert len(read_records(lab.host_keys)) == 1
    assert len(read_records(lab.setup_log)) == len(reports)
