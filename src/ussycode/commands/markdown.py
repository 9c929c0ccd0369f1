"""Render the Markdown of the user documentation for a terminal.

Covers what the docs use: ATX headings, paragraphs, bullet and numbered lists, fenced code
blocks, block quotes, tables, and inline code, bold, emphasis and links. Paragraphs and list
items are wrapped to the width; code blocks and tables are printed as written.
"""

from __future__ import annotations

import re
import textwrap

from ussycode.commands.render import Style

DEFAULT_WIDTH = 80
MAX_WIDTH = 100
_CODE_SPAN_RE = re.compile(r"`([^`]+)`")
_BOLD_RE = re.compile(r"\*\*([^*]+)\*\*")
_EMPHASIS_RE = re.compile(r"(?<![*\w])\*([^*\s][^*]*)\*(?![*\w])")
_LINK_RE = re.compile(r"\[([^\]]+)\]\(([^)\s]+)\)")
_LIST_RE = re.compile(r"^(\s*)([-*]|\d+\.)\s+(.*)$")
_NO_BREAK = "\x01"
_HEADING_RE = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def title(markdown: str) -> str:
    """Return the text of the first heading, or "" if there is none."""
    for line in markdown.splitlines():
        match = _HEADING_RE.match(line)
        if match:
            return match.group(2)
    return ""


def _inline(text: str, style: Style) -> str:
    """Render inline markup; code spans are protected from the other rules."""
    spans: list[str] = []

    def keep_code(match: re.Match[str]) -> str:
        spans.append(style.paint(match.group(1), "cyan") if style.color else f"`{match.group(1)}`")
        return f"\0{len(spans) - 1}\0"

    text = _CODE_SPAN_RE.sub(keep_code, text)
    text = _LINK_RE.sub(
        lambda m: m.group(1) if m.group(1) == m.group(2) else f"{m.group(1)} ({m.group(2)})", text
    )
    text = _BOLD_RE.sub(lambda m: style.paint(m.group(1), "bold"), text)
    text = _EMPHASIS_RE.sub(lambda m: m.group(1), text)
    return re.sub(r"\0(\d+)\0", lambda m: spans[int(m.group(1))], text)


def _wrap(text: str, width: int, first: str, rest: str, style: Style) -> list[str]:
    """Wrap plain `text`, then render inline markup, so that colour codes do not count as width.

    Spaces inside code spans are kept from breaking, so that a span stays on one line.
    """
    text = _CODE_SPAN_RE.sub(lambda m: m.group(0).replace(" ", _NO_BREAK), text)
    lines = textwrap.wrap(
        text,
        width=max(20, width),
        initial_indent=first,
        subsequent_indent=rest,
        break_on_hyphens=False,
        break_long_words=False,
    )
    return [_inline(line, style).replace(_NO_BREAK, " ") for line in lines] or [first.rstrip()]


def render(markdown: str, style: Style) -> str:
    """Return `markdown` as text for a terminal of `style.width` columns (80 if unknown)."""
    width = min(style.width or DEFAULT_WIDTH, MAX_WIDTH)
    output: list[str] = []
    # The open paragraph or list item: its words so far, and the indents of its first and
    # following lines.
    block: list[str] = []
    indents = ("", "")
    in_code = False

    def flush() -> None:
        if block:
            output.extend(_wrap(" ".join(block), width, indents[0], indents[1], style))
            block.clear()

    for raw in markdown.splitlines():
        line = raw.rstrip()
        if line.lstrip().startswith("```"):
            flush()
            in_code = not in_code
            if in_code and output and output[-1] != "":
                output.append("")
            if not in_code:
                output.append("")
            continue
        if in_code:
            output.append(style.paint("    " + line, "cyan") if line else "")
            continue
        heading = _HEADING_RE.match(line)
        item = _LIST_RE.match(line)
        if heading:
            flush()
            level, text = len(heading.group(1)), heading.group(2).replace("`", "")
            if output and output[-1] != "":
                output.append("")
            if level == 1:
                output.append(style.paint(text.upper(), "bold"))
            elif level == 2:
                output.append(style.paint(text, "bold", "underline"))
            else:
                output.append(style.paint(text, "bold"))
            output.append("")
        elif item:
            flush()
            indent = " " * (len(item.group(1)) + 2)
            marker = "•" if item.group(2) in "-*" else item.group(2)
            first = f"{indent}{marker} "
            indents = (first, " " * len(first))
            block.append(item.group(3))
        elif line.startswith(">"):
            flush()
            indents = ("  │ ", "  │ ")
            block.append(line.lstrip("> "))
        elif line.startswith("|"):
            flush()
            if not re.fullmatch(r"\|[\s:|-]+\|?", line):
                output.append(_inline(line, style))
        elif not line.strip():
            flush()
            if output and output[-1] != "":
                output.append("")
        elif block and raw[:1].isspace():
            # A continuation line of the list item or paragraph above.
            block.append(line.strip())
        else:
            if not block:
                indents = ("", "")
            block.append(line.strip())
    flush()
    while output and output[-1] == "":
        output.pop()
    return "\n".join(output)
