"""QR codes drawn in a terminal with half-block characters."""

from __future__ import annotations

from ussycode.errors import RuntimeFailure

# One character cell contains two modules, one above the other. Cells are about twice as high as
# wide, so the modules come out square.
_CELLS = {(False, False): " ", (True, False): "\u2580", (False, True): "\u2584", (True, True): "\u2588"}
# Black on white whatever the terminal's colours, because scanners expect dark modules on a
# light background: 38;5;16 is black and 48;5;231 white in the 256-colour palette.
_COLOURS = "\x1b[38;5;16;48;5;231m"
_RESET = "\x1b[0m"
QUIET_ZONE = 2


def qr_matrix(data: str) -> list[list[bool]]:
    """Return the modules of a QR code for `data` (True is dark), with a light quiet zone.

    :raise RuntimeFailure: the segno package, which encodes QR codes, is not installed.
    """
    try:
        import segno
    except ImportError as exc:
        raise RuntimeFailure("cannot draw a QR code: the segno package is not installed") from exc
    code = segno.make_qr(data, error="m")
    return [[bool(module) for module in row] for row in code.matrix_iter(scale=1, border=QUIET_ZONE)]


def qr_text(data: str, *, colour: bool = True) -> str:
    """Return a QR code for `data` as lines of half blocks, each line two module rows high."""
    matrix = qr_matrix(data)
    if len(matrix) % 2:
        matrix.append([False] * len(matrix[0]))
    lines = []
    for top, bottom in zip(matrix[0::2], matrix[1::2], strict=True):
        cells = "".join(_CELLS[pair] for pair in zip(top, bottom, strict=True))
        lines.append(f"{_COLOURS}{cells}{_RESET}" if colour else cells)
    return "\n".join(lines)
