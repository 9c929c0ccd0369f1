"""The `ussycode` command: `serve` runs the platform, `image build` builds the guest image."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from ussycode import __version__, config, logs
from ussycode.errors import UssycodeError

log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ussycode",
        description="Self-hostable dev environments: SSH in, get a VM with a disk and an HTTPS URL.",
    )
    parser.add_argument("--version", action="version", version=f"ussycode {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the platform (SSH gateway, VMs, metadata, Caddy)")
    config.add_arguments(serve)

    image = commands.add_parser("image", help="build and list guest images")
    image_commands = image.add_subparsers(dest="image_command", required=True, metavar="ACTION")
    build = image_commands.add_parser("build", help="build a guest image with mmdebstrap (cached by recipe)")
    config.add_arguments(build)
    build.add_argument(
        "--name", dest="image_name", default=None, help="image name (default: --image, ussyuntu)"
    )
    build.add_argument("--suite", default=None, help="distribution suite (default bookworm)")
    build.add_argument(
        "--mirror", default=None, help="package mirror URL (default http://deb.debian.org/debian)"
    )
    build.add_argument("--force", action="store_true", help="rebuild even if a build with this recipe exists")
    listing = image_commands.add_parser("list", help="list built images")
    config.add_arguments(listing)

    remote = commands.add_parser("exec", help="run a command through the HTTPS API (POST /exec)")
    remote.add_argument("command_line", metavar="COMMAND", help='the command line, quoted, e.g. "ls"')
    remote.add_argument(
        "--url", default=None, help="server URL (env USSYCODE_URL; default https://ussy.localhost)"
    )
    remote.add_argument("--token", default=None, help="usy0 or usy1 token (env USSYCODE_TOKEN)")
    remote.add_argument("--cacert", default=None, help="CA certificate for a server with a private CA")
    return parser


def inline_setup_script(command_line: str) -> str:
    """Replace `--setup-script FILE` in a command line with the file's text, which the API takes.

    The server cannot read the caller's files, so the client sends the script itself.
    :raise UssycodeError: the file cannot be read.
    """
    try:
        argv = shlex.split(command_line)
    except ValueError:
        return command_line
    for index, word in enumerate(argv):
        name, sep, value = word.partition("=")
        if name != "--setup-script":
            continue
        if sep:
            position, path = index, value
        elif index + 1 < len(argv):
            position, path = index + 1, argv[index + 1]
        else:
            return command_line
        if path == "-" or "\n" in path:
            return command_line
        try:
            text = Path(path).read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise UssycodeError(f"cannot read the setup script {path}: {exc}") from exc
        if "\n" not in text:
            text += "\n"
        argv[position] = f"--setup-script={text}" if sep else text
        return shlex.join(argv)
    return command_line


def _exec(args: argparse.Namespace) -> int:
    from ussycode.client import APIError, Client

    url = args.url or os.environ.get("USSYCODE_URL") or "https://ussy.localhost"
    token = args.token or os.environ.get("USSYCODE_TOKEN")
    if not token:
        print("ussycode exec: missing token: pass --token or set USSYCODE_TOKEN", file=sys.stderr)
        return 2
    try:
        result = Client(url, token, cafile=args.cacert).exec(inline_setup_script(args.command_line))
    except APIError as exc:
        print(f"ussycode exec: {exc.status} {exc.code}: {exc.message}", file=sys.stderr)
        return 1
    except UssycodeError as exc:
        print(f"ussycode exec: {exc.message}", file=sys.stderr)
        return 1
    print(json.dumps(result.data, indent=2))
    return result.exit_status if result.exit_status is not None else 0


def _image_build(settings: config.Config, args: argparse.Namespace) -> int:
    from ussycode.store import Store
    from ussycode.vm import image

    name = args.image_name or settings.image
    manifest = image.build_image(
        settings.image_dir,
        name=name,
        suite=args.suite or image.DEFAULT_SUITE,
        mirror=args.mirror or image.DEFAULT_MIRROR,
        force=args.force,
        progress=lambda message: print(f"  … {message}", file=sys.stderr, flush=True),
    )
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    store = Store(settings.data_dir / "ussycode.db")
    store.upsert_image(manifest.name, manifest.recipe_hash, str(manifest.directory))
    store.close()
    print(f"image {manifest.name} ready: {manifest.directory}")
    return 0


def _image_list(settings: config.Config) -> int:
    from ussycode.vm import image

    images = image.list_images(settings.image_dir)
    if not images:
        print(f'no images in {settings.image_dir}: run "ussycode image build"')
        return 0
    for manifest in images:
        short_hash = manifest.recipe_hash[:12]
        print(f"{manifest.name}  {manifest.suite}  {short_hash}  {manifest.created_at}  {manifest.directory}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "exec":
        return _exec(args)
    try:
        settings = config.load(args)
    except UssycodeError as exc:
        print(f"ussycode: {exc.message}", file=sys.stderr)
        return 2
    logs.configure(settings.log_level)
    try:
        if args.command == "serve":
            from ussycode.server import serve

            asyncio.run(serve(settings))
            return 0
        if args.image_command == "build":
            return _image_build(settings, args)
        return _image_list(settings)
    except UssycodeError as exc:
        log.debug("command failed", exc_info=True)
        print(f"ussycode: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
