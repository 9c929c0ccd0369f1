"""Validation of tags, comments, environment variables and setup scripts."""

from __future__ import annotations

import pytest

from ussycode.errors import InvalidInput
from ussycode.vm import attributes


def test_parse_tags_split_and_sorted() -> None:
    assert attributes.parse_tags(["web,db", "api", "web", " ", "a.b_c-1"]) == ("a.b_c-1", "api", "db", "web")


@pytest.mark.parametrize("tag", ["Web", "-web", "we b", "x" * 33, "ü"])
def test_parse_tags_invalid(tag: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        attributes.parse_tags([tag])
    assert str(caught.value).startswith(f'invalid tag "{tag.strip()}": use 1 to 32 lowercase letters')


def test_tag_count_limit() -> None:
    attributes.check_tag_count([f"t{n}" for n in range(16)], "mild-owl")
    with pytest.raises(InvalidInput) as caught:
        attributes.check_tag_count([f"t{n}" for n in range(17)], "mild-owl")
    assert str(caught.value) == 'vm "mild-owl" would have 17 tags: the limit is 16'


def test_comment_limits() -> None:
    assert attributes.check_comment("ünïcode " * 10) == "ünïcode " * 10
    assert attributes.check_comment("x" * 200) == "x" * 200
    with pytest.raises(InvalidInput) as long:
        attributes.check_comment("x" * 201)
    assert str(long.value) == "comment is 201 bytes: the limit is 200 bytes"
    with pytest.raises(InvalidInput) as multibyte:
        attributes.check_comment("é" * 101)
    assert str(multibyte.value) == "comment is 202 bytes: the limit is 200 bytes"
    with pytest.raises(InvalidInput) as control:
        attributes.check_comment("two\nlines")
    assert str(control.value) == "comment must be one line without control characters"


def test_parse_env_valid() -> None:
    env = attributes.parse_env(["PORT=8080", "EMPTY=", "URL=http://x/?a=b", "PORT=9090"])
    assert env == {"PORT": "9090", "EMPTY": "", "URL": "http://x/?a=b"}


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("PORT", 'invalid --env "PORT": expected KEY=VALUE, such as --env PORT=8080'),
        ("1X=a", 'invalid --env name "1X": use letters, digits and "_", not starting with a digit'),
        ("A-B=a", 'invalid --env name "A-B": use letters, digits and "_", not starting with a digit'),
        ("=a", 'invalid --env name "": use letters, digits and "_", not starting with a digit'),
        (
            "USSYCODE_VM_NAME=x",
            'invalid --env name "USSYCODE_VM_NAME": names starting with USSYCODE_ are set by the platform',
        ),
        (
            "ussycode_x=x",
            'invalid --env name "ussycode_x": names starting with USSYCODE_ are set by the platform',
        ),
        ("A=one\ntwo", "invalid --env A: the value must be one line"),
        ("A=" + "x" * 4097, "invalid --env A: the value is over 4096 bytes"),
    ],
)
def test_parse_env_invalid(entry: str, message: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        attributes.parse_env([entry])
    assert str(caught.value) == message


def test_parse_env_count_limit() -> None:
    assert len(attributes.parse_env([f"V{n}=x" for n in range(64)])) == 64
    with pytest.raises(InvalidInput) as caught:
        attributes.parse_env([f"V{n}=x" for n in range(65)])
    assert str(caught.value) == "65 --env variables: the limit is 64"


def test_setup_script_limits() -> None:
    script = "#!/bin/sh\n" + "echo hi\n" * 1000
    assert attributes.check_setup_script(script) == script
    with pytest.raises(InvalidInput) as empty:
        attributes.check_setup_script(" \n")
    assert str(empty.value) == "the setup script is empty"
    with pytest.raises(InvalidInput) as large:
        attributes.check_setup_script("x" * 10241)
    assert str(large.value) == "the setup script is 10241 bytes: the limit is 10240 bytes (10 KiB)"
    with pytest.raises(InvalidInput) as nul:
        attributes.check_setup_script("echo \0")
    assert str(nul.value) == "the setup script contains a NUL byte: it must be text"


def test_agent_prompt_limits() -> None:
    prompt = "Build a guestbook app.\n\tUse Go.\r\n" + "é" * 100
    assert attributes.check_agent_prompt(prompt) == prompt
    assert attributes.check_agent_prompt("x" * 16384) == "x" * 16384
    with pytest.raises(InvalidInput) as empty:
        attributes.check_agent_prompt(" \n\t")
    assert str(empty.value) == "--prompt is empty: give the first instruction for the agent"
    with pytest.raises(InvalidInput) as long:
        attributes.check_agent_prompt("é" * 8193)
    assert str(long.value) == "--prompt is 16386 bytes: the limit is 16384 bytes (16 KiB)"


@pytest.mark.parametrize(
    ("char", "code"),
    [("\0", "0000"), ("\x1b", "001B"), ("\x7f", "007F"), ("\b", "0008"), ("\x9b", "009B"), ("\x85", "0085")],
)
def test_agent_prompt_control_characters(char: str, code: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        attributes.check_agent_prompt(f"hello {char}[2J world")
    assert str(caught.value) == (
        f"--prompt contains the control character U+{code}: only text, tabs and line breaks are allowed"
    )
