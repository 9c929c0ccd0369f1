"""Guest images: build the root filesystem, kernel and initrd that every VM boots from.

`build_image` runs mmdebstrap to create a Debian (or Ubuntu) tree, lets
`guest/customize.sh` install the boot agent and configure sshd, then packs the tree into a
sparse raw ext4 file with `mkfs.ext4 -d`. VM disks are qcow2 overlays on that file, and the
guest grows its filesystem to the overlay's size at boot. A build lives in

    <image_dir>/<name>/<recipe_hash>/{rootfs.ext4, vmlinuz, initrd.img, manifest.json}

The recipe hash covers everything that decides the build's content except package versions:
name, suite, mirror, package list, the files under `guest/`, and `RECIPE_VERSION`. A build
with a known recipe returns the existing result at once. A build is assembled in a dot-directory
and renamed into place after its manifest is written, so an interrupted build never looks
complete, and `find_image` only returns directories with a manifest and all three files.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import hashlib
import json
import logging
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ussycode.errors import InvalidInput, RuntimeFailure
from ussycode.proc import run_sync

log = logging.getLogger(__name__)

DEFAULT_IMAGE = "ussyuntu"
DEFAULT_SUITE = "bookworm"
DEFAULT_MIRROR = "http://deb.debian.org/debian"

# Bump when the build steps in this module change in a way that changes the image.
RECIPE_VERSION = 2

GUEST_DIR = Path(__file__).parent / "guest"
ROOTFS_FILE = "rootfs.ext4"
KERNEL_FILE = "vmlinuz"
INITRD_FILE = "initrd.img"
MANIFEST_FILE = "manifest.json"
# Apparent size of the raw image. The file is sparse, and the guest grows it to its disk's size.
ROOTFS_SIZE_BYTES = 3 * 1024**3

# Arguments the image needs. The host appends ussy.ip=, ussy.gw= and ussy.dns= to them.
KERNEL_CMDLINE = "root=/dev/vda rw console=ttyS0 net.ifnames=0 biosdevname=0 quiet"

PACKAGES = (
    "systemd",
    "systemd-sysv",
    "udev",
    "openssh-server",
    "openssh-sftp-server",
    "sudo",
    "curl",
    "ca-certificates",
    "git",
    "rsync",
    "python3",
    "iproute2",
    "iputils-ping",
    "netbase",
    "procps",
    "less",
    "e2fsprogs",
    "initramfs-tools",
    # The /init of the initramfs that make-initramfs.sh builds; static, so it needs no libraries.
    "busybox-static",
    # Powers the VM off on the ACPI power button, which is how QEMU asks a guest to shut down;
    # systemd-logind would need D-Bus, which the image leaves out for boot time.
    "acpid",
)
# Toolchains for coding agents. guest/agents/install.sh adds Go, Node.js and the agents. pi
# downloads fd and ripgrep at its first start unless they are installed.
AGENT_PACKAGES = ("build-essential", "python3-pip", "python3-venv", "tmux", "fd-find", "ripgrep")
# The cloud flavour boots under QEMU `-M pc` with virtio and has fewer modules than the generic one.
DEBIAN_KERNEL = "linux-image-cloud-amd64"
UBUNTU_KERNEL = "linux-image-virtual"
UBUNTU_SUITES = frozenset({"focal", "jammy", "noble", "oracular", "plucky", "questing"})

MMDEBSTRAP_TIMEOUT_SECONDS = 3600.0
MKFS_TIMEOUT_SECONDS = 600.0

_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_SUITE_RE = re.compile(r"^[a-z][a-z0-9-]{0,39}$")
_OUTPUT_TAIL_LINES = 40


@dataclass(frozen=True)
class ImageManifest:
    """A complete image build: where its files are and how to boot it."""

    name: str
    recipe_hash: str
    suite: str
    mirror: str
    directory: Path
    rootfs: Path
    kernel: Path
    initrd: Path
    rootfs_size_bytes: int
    created_at: str
    kernel_cmdline: str

    def to_json(self) -> dict[str, Any]:
        """Return the manifest.json form, with file paths relative to the build directory."""
        return {
            "name": self.name,
            "recipe_hash": self.recipe_hash,
            "suite": self.suite,
            "mirror": self.mirror,
            "rootfs": _relative(self.rootfs, self.directory),
            "kernel": _relative(self.kernel, self.directory),
            "initrd": _relative(self.initrd, self.directory),
            "rootfs_size_bytes": self.rootfs_size_bytes,
            "created_at": self.created_at,
            "kernel_cmdline": self.kernel_cmdline,
        }

    @classmethod
    def from_json(cls, data: Any, directory: Path) -> ImageManifest:
        """Read a manifest.json document whose files are in `directory`.

        :raise InvalidInput: a field is missing, has the wrong type, or names a file outside
            `directory`.
        """
        if not isinstance(data, dict):
            raise InvalidInput(f"image manifest in {directory} is not a JSON object")
        strings = {}
        for key in (
            "name",
            "recipe_hash",
            "suite",
            "mirror",
            "rootfs",
            "kernel",
            "initrd",
            "created_at",
            "kernel_cmdline",
        ):
            value = data.get(key)
            if not isinstance(value, str):
                raise InvalidInput(f"image manifest in {directory}: field {key!r} is missing or not a string")
            strings[key] = value
        size = data.get("rootfs_size_bytes")
        if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
            raise InvalidInput(f"image manifest in {directory}: rootfs_size_bytes must be a positive integer")

        def file_in_directory(key: str) -> Path:
            relative = Path(strings[key])
            if relative.is_absolute() or ".." in relative.parts or not relative.parts:
                raise InvalidInput(
                    f"image manifest in {directory}: {key} {strings[key]!r} must be a file name"
                    " inside the build directory"
                )
            return directory / relative

        return cls(
            name=strings["name"],
            recipe_hash=strings["recipe_hash"],
            suite=strings["suite"],
            mirror=strings["mirror"],
            directory=directory,
            rootfs=file_in_directory("rootfs"),
            kernel=file_in_directory("kernel"),
            initrd=file_in_directory("initrd"),
            rootfs_size_bytes=size,
            created_at=strings["created_at"],
            kernel_cmdline=strings["kernel_cmdline"],
        )


def _relative(path: Path, directory: Path) -> str:
    try:
        return str(path.relative_to(directory))
    except ValueError:
        return str(path)


def check_name(name: str) -> None:
    """:raise InvalidInput: `name` is not lowercase letters, digits and inner dashes."""
    if not _NAME_RE.match(name):
        raise InvalidInput(
            f"invalid image name {name!r}: use 1 to 63 lowercase letters, digits and dashes,"
            " starting and ending with a letter or digit"
        )


def check_suite(suite: str) -> None:
    """:raise InvalidInput: `suite` is not a distribution codename such as bookworm or noble."""
    if not _SUITE_RE.match(suite):
        raise InvalidInput(
            f"invalid suite {suite!r}: use a codename of lowercase letters, digits and dashes,"
            " such as bookworm or noble"
        )


def check_mirror(mirror: str) -> None:
    """:raise InvalidInput: `mirror` is not an http, https or file URL."""
    parts = urlsplit(mirror)
    has_host = parts.scheme == "file" or bool(parts.netloc)
    if parts.scheme not in ("http", "https", "file") or not has_host or any(c.isspace() for c in mirror):
        raise InvalidInput(
            f"invalid mirror {mirror!r}: use an http, https or file URL such as {DEFAULT_MIRROR}"
        )


def is_ubuntu(suite: str) -> bool:
    """Return whether `suite` is an Ubuntu codename, which changes the kernel package."""
    return suite in UBUNTU_SUITES


def package_list(suite: str) -> tuple[str, ...]:
    """Return the packages installed on top of mmdebstrap's minbase variant for `suite`."""
    return (*PACKAGES, *AGENT_PACKAGES, UBUNTU_KERNEL if is_ubuntu(suite) else DEBIAN_KERNEL)


def mirror_lines(suite: str, mirror: str) -> list[str]:
    """Return the sources.list lines for the build and for the guest's own apt.

    Ubuntu mirrors carry the -updates and -security pockets next to the release, and every
    Debian mirror carries -updates. Debian's security archive is a separate tree, added only
    for deb.debian.org, where its location is known.
    """
    if is_ubuntu(suite):
        # NOTE: Ubuntu builds are untested: the Ubuntu archive is not reachable from the machines
        # this was written on. mmdebstrap on a Debian host also needs the ubuntu-keyring package.
        components = "main universe"
        suites = [suite, f"{suite}-updates", f"{suite}-security"]
        return [f"deb {mirror} {name} {components}" for name in suites]
    if suite in ("sid", "unstable", "experimental"):
        return [f"deb {mirror} {suite} main"]
    lines = [f"deb {mirror} {suite} main", f"deb {mirror} {suite}-updates main"]
    if urlsplit(mirror).netloc == "deb.debian.org":
        security = mirror.rstrip("/").rsplit("/", 1)[0] + "/debian-security"
        lines.append(f"deb {security} {suite}-security main")
    return lines


def _guest_files(guest_dir: Path) -> list[Path]:
    return sorted(path for path in guest_dir.rglob("*") if path.is_file() and not _ignored(path))


def _ignored(path: Path) -> bool:
    return "__pycache__" in path.parts or path.suffix == ".pyc"


def recipe_hash(name: str, suite: str, mirror: str) -> str:
    """Return the hex SHA-256 of everything that decides a build's content.

    :raise InvalidInput: invalid name, suite or mirror.
    """
    check_name(name)
    check_suite(suite)
    check_mirror(mirror)

    return _recipe_digest(name, suite, mirror, GUEST_DIR)


def _recipe_digest(name: str, suite: str, mirror: str, guest_dir: Path) -> str:
    digest = hashlib.sha256()
    recipe = {
        "recipe_version": RECIPE_VERSION,
        "name": name,
        "suite": suite,
        "mirror": mirror,
        "sources": mirror_lines(suite, mirror),
        "packages": list(package_list(suite)),
        "rootfs_size_bytes": ROOTFS_SIZE_BYTES,
        "kernel_cmdline": KERNEL_CMDLINE,
    }
    digest.update(json.dumps(recipe, sort_keys=True).encode())
    for path in _guest_files(guest_dir):
        relative = path.relative_to(guest_dir).as_posix().encode()
        content = path.read_bytes()
        # Length prefixes keep (name, content) pairs from running into each other.
        digest.update(b"%d:%s%d:" % (len(relative), relative, len(content)))
        digest.update(content)
    return digest.hexdigest()


def _read_manifest(directory: Path) -> ImageManifest | None:
    """Return the manifest of a complete build in `directory`, or None if it is incomplete."""
    manifest_path = directory / MANIFEST_FILE
    try:
        data = json.loads(manifest_path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("ignoring image build %s: unreadable %s: %s", directory, MANIFEST_FILE, exc)
        return None
    try:
        manifest = ImageManifest.from_json(data, directory)
    except InvalidInput as exc:
        log.warning("ignoring image build %s: %s", directory, exc)
        return None
    missing = [p.name for p in (manifest.rootfs, manifest.kernel, manifest.initrd) if not p.is_file()]
    if missing:
        log.warning("ignoring image build %s: missing %s", directory, ", ".join(missing))
        return None
    return manifest


def _builds(image_dir: Path, name: str) -> list[ImageManifest]:
    """Return the complete builds of `name`, newest first."""
    name_dir = image_dir / name
    if not name_dir.is_dir():
        return []
    manifests = []
    for entry in name_dir.iterdir():
        if entry.name.startswith(".") or not entry.is_dir():
            continue
        manifest = _read_manifest(entry)
        if manifest is not None and manifest.name == name:
            manifests.append(manifest)
    manifests.sort(key=lambda manifest: manifest.created_at, reverse=True)
    return manifests


def find_image(image_dir: Path, name: str) -> ImageManifest | None:
    """Return the newest complete build of image `name`, or None if there is none.

    :raise InvalidInput: invalid image name.
    """
    check_name(name)
    builds = _builds(image_dir, name)
    return builds[0] if builds else None


def list_images(image_dir: Path) -> list[ImageManifest]:
    """Return every complete build in `image_dir`, by name, newest first within a name."""
    if not image_dir.is_dir():
        return []
    manifests = []
    for entry in sorted(image_dir.iterdir()):
        if entry.is_dir() and _NAME_RE.match(entry.name):
            manifests.extend(_builds(image_dir, entry.name))
    return manifests


def build_image(
    image_dir: Path,
    *,
    name: str = DEFAULT_IMAGE,
    suite: str = DEFAULT_SUITE,
    mirror: str = DEFAULT_MIRROR,
    force: bool = False,
    progress: Callable[[str], None] | None = None,
) -> ImageManifest:
    """Build image `name` from `suite` at `mirror`, or return the build of the same recipe.

    `force` rebuilds and replaces the files of an existing build with the same recipe in
    place, so VMs whose disks are overlays on that build must be stopped first. `progress`
    receives one line per build step and per line of mmdebstrap output. Builds of the same
    name wait for each other.

    :raise InvalidInput: invalid name, suite or mirror.
    :raise RuntimeFailure: mmdebstrap, the customize script or mkfs.ext4 failed; the message
        ends with the tail of their output.
    """
    report = progress or (lambda message: None)
    digest = recipe_hash(name, suite, mirror)
    target = image_dir / name / digest

    if not force:
        existing = _read_manifest(target)
        if existing is not None:
            log.debug("image %s recipe %s is already built", name, digest[:12])
            return existing

    (image_dir / name).mkdir(parents=True, exist_ok=True)
    with _build_lock(image_dir / name, report):
        if not force:
            # Another process may have finished the same build while this one waited.
            existing = _read_manifest(target)
            if existing is not None:
                return existing
        _remove_stale_builds(image_dir / name)

        started = time.monotonic()
        log.info("building image %s recipe %s from %s %s", name, digest[:12], suite, mirror)
        staging = image_dir / name / f".build-{digest[:12]}-{secrets.token_hex(4)}"
        staging.mkdir()
        try:
            manifest = _build_into(
                staging, name=name, digest=digest, suite=suite, mirror=mirror, report=report
            )
            _install(staging, target)
        except BaseException:
            _remove_tree(staging)
            raise
        manifest = ImageManifest.from_json(manifest.to_json(), target)
        elapsed = time.monotonic() - started
        log.info("built image %s recipe %s in %.0f s: %s", name, digest[:12], elapsed, target)
        report(f"image {name} built in {elapsed:.0f} s")
        return manifest


def _build_into(
    staging: Path,
    *,
    name: str,
    digest: str,
    suite: str,
    mirror: str,
    report: Callable[[str], None],
) -> ImageManifest:
    """Run every build step in `staging` and write the manifest there last."""
    # The build uses a copy of the guest files, so that edits made while it runs can neither
    # change it nor end up in a build labelled with the old recipe hash.
    guest = staging / "guest"
    shutil.copytree(GUEST_DIR, guest, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    if _recipe_digest(name, suite, mirror, guest) != digest:
        raise RuntimeFailure(
            f"the files in {GUEST_DIR} changed while the build was starting: run the build again"
        )

    tree = staging / "tree"
    report(f"mmdebstrap {suite} from {mirror} (downloads packages, takes minutes)")
    argv = _mmdebstrap_argv(tree, suite, mirror, guest)
    _run_streaming(argv, MMDEBSTRAP_TIMEOUT_SECONDS, report)

    kernel, initrd = _boot_files(tree)
    shutil.copyfile(kernel, staging / KERNEL_FILE)
    shutil.copyfile(initrd, staging / INITRD_FILE)

    report(f"packing the tree into a {ROOTFS_SIZE_BYTES >> 30} GiB ext4 image")
    rootfs = staging / ROOTFS_FILE
    with rootfs.open("wb") as handle:
        handle.truncate(ROOTFS_SIZE_BYTES)
    # -m 1: reserve 1 % for root instead of 5 %, which on a grown disk wastes gigabytes.
    run_sync(
        ["mkfs.ext4", "-F", "-q", "-L", "ussyroot", "-m", "1", "-d", str(tree), str(rootfs)],
        timeout=MKFS_TIMEOUT_SECONDS,
    )
    _remove_tree(tree)
    _remove_tree(guest)

    manifest = ImageManifest(
        name=name,
        recipe_hash=digest,
        suite=suite,
        mirror=mirror,
        directory=staging,
        rootfs=rootfs,
        kernel=staging / KERNEL_FILE,
        initrd=staging / INITRD_FILE,
        rootfs_size_bytes=rootfs.stat().st_size,
        created_at=datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        kernel_cmdline=KERNEL_CMDLINE,
    )
    manifest_path = staging / MANIFEST_FILE
    manifest_path.write_text(json.dumps(manifest.to_json(), indent=2) + "\n")
    return manifest


def _mmdebstrap_argv(tree: Path, suite: str, mirror: str, guest: Path) -> list[str]:
    customize = shlex.join(["sh", str(guest / "customize.sh")])
    return [
        "mmdebstrap",
        # unshare: mounts made for the hooks live in a private mount namespace, so a killed
        # build leaves none behind in the staging directory.
        "--mode=unshare",
        "--variant=minbase",
        "--format=directory",
        f"--include={','.join(package_list(suite))}",
        '--aptopt=Acquire::Retries "3"',
        f'--customize-hook={customize} "$1"',
        suite,
        str(tree),
        *mirror_lines(suite, mirror),
    ]


def _boot_files(tree: Path) -> tuple[Path, Path]:
    """Return the kernel that the kernel package installed in /boot and the initrd that
    guest/make-initramfs.sh built for it."""
    kernels = sorted((tree / "boot").glob("vmlinuz-*"))
    if len(kernels) != 1:
        raise RuntimeFailure(
            f"expected one kernel in {tree / 'boot'}, found {len(kernels)}:"
            f" {', '.join(p.name for p in kernels) or 'none'}"
        )
    version = kernels[0].name.removeprefix("vmlinuz-")
    initrd = tree / "boot" / f"ussycode-initrd.img-{version}"
    if not initrd.is_file():
        raise RuntimeFailure(f"initrd for kernel {version} not found: {initrd}")
    return kernels[0], initrd


def _install(staging: Path, target: Path) -> None:
    """Rename the finished build into place, replacing an older build of the same recipe."""
    if not target.exists():
        staging.rename(target)
        return
    retired = target.parent / f".old-{target.name[:12]}-{secrets.token_hex(4)}"
    log.warning("replacing image build %s: restart the VMs whose disks use it", target)
    target.rename(retired)
    staging.rename(target)
    _remove_tree(retired)


@contextlib.contextmanager
def _build_lock(name_dir: Path, report: Callable[[str], None]) -> Iterator[None]:
    """Hold an exclusive lock on `name_dir/.lock`, so that builds of one name run one at a time."""
    with (name_dir / ".lock").open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            report(f"waiting for another build of {name_dir.name} to finish")
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _remove_stale_builds(name_dir: Path) -> None:
    """Delete the staging directories of interrupted builds while the caller holds the lock."""
    for entry in name_dir.iterdir():
        if entry.is_dir() and entry.name.startswith((".build-", ".old-")):
            log.info("removing leftover image build directory %s", entry)
            _remove_tree(entry)


def _remove_tree(path: Path) -> None:
    """Delete `path`, unless something is mounted below it.

    mmdebstrap runs in unshare mode, whose mounts vanish with it, but a tree left by a killed
    root-mode run can still have /dev or /proc mounted, and deleting through such a mount would
    delete the host's files.
    """
    if not path.exists():
        return
    prefix = str(path.resolve()) + "/"
    mounts = [m for m in _mount_points() if m.startswith(prefix)]
    if mounts:
        raise RuntimeFailure(
            f"not deleting {path}: {len(mounts)} filesystems are mounted below it"
            f" ({', '.join(mounts[:3])}): unmount them, then retry"
        )
    shutil.rmtree(path)


def _mount_points() -> list[str]:
    with open("/proc/self/mountinfo") as handle:
        # The fifth field is the mount point, with spaces and other bytes escaped as octal.
        return [line.split()[4].encode().decode("unicode_escape") for line in handle if line.strip()]


def _run_streaming(argv: Sequence[str], timeout: float, report: Callable[[str], None]) -> None:
    """Run `argv`, pass each output line to `report`, and raise with the tail if it fails.

    The command runs in its own session, so a timeout ends it and every process it started.
    """
    log.info("running %s", shlex.join(argv))
    try:
        process = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            start_new_session=True,
        )
    except FileNotFoundError as exc:
        raise RuntimeFailure(f"command not found: {argv[0]}: install it first") from exc

    tail: deque[str] = deque(maxlen=_OUTPUT_TAIL_LINES)

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            text = line.rstrip()
            tail.append(text)
            log.debug("%s: %s", argv[0], text)
            report(text)

    reader = threading.Thread(target=pump, name=f"{argv[0]}-output", daemon=True)
    reader.start()
    try:
        returncode = process.wait(timeout=timeout)
    except BaseException as exc:
        # Timeout or interrupt: end the whole process group that this call started.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        reader.join(timeout=5)
        if isinstance(exc, subprocess.TimeoutExpired):
            raise RuntimeFailure(f"{argv[0]} timed out after {timeout:g} s", output="\n".join(tail)) from exc
        raise
    reader.join(timeout=5)

    if returncode != 0:
        output = "\n".join(tail)
        raise RuntimeFailure(
            f"{argv[0]} failed with exit code {returncode}:\n{output}",
            output=output,
            returncode=returncode,
        )
