"""Terminal rendering of the user documentation's Markdown."""

from __future__ import annotations

import pytest

from ussycode.commands.docs import find_topic, topics
from ussycode.commands.markdown import render, title
from ussycode.commands.render import Style
from ussycode.errors import NotFound

SAMPLE = """# Title

A paragraph with `code`, **bold**, *emphasis* and a [link](https://example.org/) that is long enough to wrap.

## Section

- first item
  continued here
- second item

1. numbered

```
keep   this   exactly
```

> quoted

| a | b |
| --- | --- |
| 1 | 2 |
"""


def test_markdown_plain_render() -> None:
    text = render(SAMPLE, Style(width=40))
    lines = text.splitlines()
    assert lines[0] == "TITLE"
    assert "`code`" in text
    assert "bold" in text
    assert "**" not in text
    assert "link (https://example.org/)" in text
    assert all(len(line) <= 40 for line in lines if not line.startswith("    "))
    assert "  • first item continued here" in lines
    assert "  1. numbered" in lines
    assert "    keep   this   exactly" in lines
    assert "  │ quoted" in lines
    assert "| 1 | 2 |" in lines
    assert "| --- | --- |" not in lines


def test_markdown_color_render() -> None:
    text = render(SAMPLE, Style(color=True, width=80))
    assert "\x1b[36mcode\x1b[0m" in text
    assert "\x1b[1mbold\x1b[0m" in text
    assert "\x1b[1;4mSection\x1b[0m" in text


def test_markdown_title() -> None:
    assert title(SAMPLE) == "Title"
    assert title("no heading") == ""


def test_docs_topics_present() -> None:
    available = topics()
    assert list(available)[:6] == [
        "getting-started",
        "https-and-ports",
        "sharing",
        "api-and-tokens",
        "ssh-tips",
        "llm",
    ]
    for markdown in available.values():
        assert title(markdown)


def test_docs_find_topic() -> None:
    available = topics()
    assert find_topic("ssh", available) == "ssh-tips"
    assert find_topic("sharing", available) == "sharing"
    with pytest.raises(NotFound) as unknown:
        find_topic("sharin-g", available)
    assert str(unknown.value).startswith(
        'no doc topic "sharin-g": did you mean "sharing"? topics are getting-started'
    )
    with pytest.raises(NotFound):
        find_topic("s", available)
