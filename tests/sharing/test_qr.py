"""The terminal QR code of `browser --qr` decodes to the login link, read back with zbarimg."""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import pytest

from ussycode.commands.qr import qr_matrix, qr_text

URL = "https://ussy.localhost/__ussycode/login?token=" + "Ab3_-" * 8 + "xyz"
_HALF_BLOCKS = {" ": (False, False), "\u2580": (True, False), "\u2584": (False, True), "\u2588": (True, True)}


def modules_from_text(text: str) -> list[list[bool]]:
    """Turn half-block lines back into module rows (True is dark)."""
    rows: list[list[bool]] = []
    for line in re.sub(r"\x1b\[[0-9;]*m", "", text).splitlines():
        pairs = [_HALF_BLOCKS[char] for char in line]
        rows.append([top for top, _ in pairs])
        rows.append([bottom for _, bottom in pairs])
    return rows


def write_png(path: Path, modules: list[list[bool]], scale: int = 8) -> None:
    """Write the modules as a greyscale PNG, dark modules black, `scale` pixels per module."""
    width = len(modules[0]) * scale
    raw = b""
    for row in modules:
        line = b"".join((b"\x00" if dark else b"\xff") * scale for dark in row)
        raw += (b"\x00" + line) * scale

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, len(modules) * scale, 8, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def decode(path: Path) -> str:
    if shutil.which("zbarimg") is None:
        pytest.fail("zbarimg not found: install zbar-tools (scripts/install.sh does)")
    result = subprocess.run(
        ["zbarimg", "--raw", "--quiet", str(path)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_qr_text_decodes_to_url(tmp_path: Path) -> None:
    modules = modules_from_text(qr_text(URL))
    write_png(tmp_path / "qr.png", modules)
    assert decode(tmp_path / "qr.png") == URL


def test_qr_text_matches_matrix() -> None:
    matrix = qr_matrix(URL)
    rows = modules_from_text(qr_text(URL, colour=False))
    assert rows[: len(matrix)] == matrix
    assert len(rows) - len(matrix) in (0, 1)
    assert not any(dark for row in rows[len(matrix) :] for dark in row)


def test_qr_text_forces_black_on_white() -> None:
    for line in qr_text(URL).splitlines():
        assert line.startswith("\x1b[38;5;16;48;5;231m")
        assert line.endswith("\x1b[0m")


def test_qr_quiet_zone_light() -> None:
    matrix = qr_matrix(URL)
    assert not any(matrix[0])
    assert not any(row[0] for row in matrix)
    assert any(matrix[2])
