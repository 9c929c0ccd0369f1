"""Attributes users set on a VM (tags, comment, environment, setup script, agent prompt) and their limits."""

from __future__ import annotations

import re
from collections.abc import Iterable

from ussycode.errors import InvalidInput

TAG_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,31}$")
MAX_TAGS = 16
MAX_COMMENT_BYTES = 200
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
MAX_ENV_ENTRIES = 64
MAX_ENV_VALUE_BYTES = 4096
# Variables the platform sets itself in every VM; users cannot replace them.
RESERVED_ENV_PREFIX = "USSYCODE_"
MAX_SETUP_SCRIPT_BYTES = 10 * 1024
# The prompt travels in the metadata document and becomes one argument of pi's command line.
MAX_AGENT_PROMPT_BYTES = 16 * 1024


def parse_tags(values: Iterable[str]) -> tuple[str, ...]:
    """Split repeated or comma-separated tags, check each, and return them sorted without repeats.

    :raise InvalidInput: a tag is not 1 to 32 lowercase letters, digits, `_`, `.` or `-`.
    """
    tags: set[str] = set()
    for value in values:
        for part in value.split(","):
            tag = part.strip()
            if not tag:
                continue
            if not TAG_RE.match(tag):
                raise InvalidInput(
                    f'invalid tag "{tag}": use 1 to 32 lowercase letters, digits, "_", "." or "-",'
                    " starting with a letter or digit"
                )
            tags.add(tag)
    return tuple(sorted(tags))


def check_tag_count(tags: Iterable[str], vm_name: str) -> None:
    count = len(set(tags))
    if count > MAX_TAGS:
        raise InvalidInput(f'vm "{vm_name}" would have {count} tags: the limit is {MAX_TAGS}')


def check_comment(text: str) -> str:
    """Return `text` if it is one line of at most 200 bytes of UTF-8.

    :raise InvalidInput: too long or contains a control character.
    """
    size = len(text.encode())
    if size > MAX_COMMENT_BYTES:
        raise InvalidInput(f"comment is {size} bytes: the limit is {MAX_COMMENT_BYTES} bytes")
    if any(ord(char) < 32 or ord(char) == 127 for char in text):
        raise InvalidInput("comment must be one line without control characters")
    return text


def parse_env(entries: Iterable[str]) -> dict[str, str]:
    """Parse `KEY=VALUE` entries; a later entry for the same key wins.

    :raise InvalidInput: no `=`, an invalid or reserved name, a value with a line break or
        NUL, a value over 4 KiB, or more than 64 entries.
    """
    env: dict[str, str] = {}
    for entry in entries:
        key, sep, value = entry.partition("=")
        if not sep:
            raise InvalidInput(f'invalid --env "{entry}": expected KEY=VALUE, such as --env PORT=8080')
        if not ENV_NAME_RE.match(key):
            raise InvalidInput(
                f'invalid --env name "{key}": use letters, digits and "_", not starting with a digit'
            )
        if key.upper().startswith(RESERVED_ENV_PREFIX):
            raise InvalidInput(
                f'invalid --env name "{key}": names starting with USSYCODE_ are set by the platform'
            )
        if any(char in value for char in "\r\n\0"):
            raise InvalidInput(f"invalid --env {key}: the value must be one line")
        if len(value.encode()) > MAX_ENV_VALUE_BYTES:
            raise InvalidInput(f"invalid --env {key}: the value is over {MAX_ENV_VALUE_BYTES} bytes")
        env[key] = value
    if len(env) > MAX_ENV_ENTRIES:
        raise InvalidInput(f"{len(env)} --env variables: the limit is {MAX_ENV_ENTRIES}")
    return env


def check_setup_script(script: str) -> str:
    """Return `script` if it is non-empty, at most 10 KiB and free of NUL bytes.

    :raise InvalidInput: empty, too long or contains NUL.
    """
    size = len(script.encode())
    if not script.strip():
        raise InvalidInput("the setup script is empty")
    if size > MAX_SETUP_SCRIPT_BYTES:
        raise InvalidInput(
            f"the setup script is {size} bytes: the limit is {MAX_SETUP_SCRIPT_BYTES} bytes (10 KiB)"
        )
    if "\0" in script:
        raise InvalidInput("the setup script contains a NUL byte: it must be text")
    return script


def check_agent_prompt(prompt: str) -> str:
    """Return `prompt` if it is non-empty text of at most 16 KiB.

    Line breaks and tabs are allowed. Other control characters are not, because the prompt is
    shown in the agent's terminal, where escape sequences would act on the screen.

    :raise InvalidInput: empty, too long, or contains a control character.
    """
    size = len(prompt.encode())
    if not prompt.strip():
        raise InvalidInput("--prompt is empty: give the first instruction for the agent")
    if size > MAX_AGENT_PROMPT_BYTES:
        raise InvalidInput(f"--prompt is {size} bytes: the limit is {MAX_AGENT_PROMPT_BYTES} bytes (16 KiB)")
    for char in prompt:
        # C0 controls other than tab and line breaks, DEL, and the C1 controls, among them
        # U+009B, which some terminals read as the start of an escape sequence.
        if (ord(char) < 32 and char not in "\t\n\r") or 127 <= ord(char) <= 159:
            raise InvalidInput(
                f"--prompt contains the control character U+{ord(char):04X}:"
                " only text, tabs and line breaks are allowed"
            )
    return prompt
