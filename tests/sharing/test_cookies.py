"""The platform's cookies: attributes and reading them back from Cookie headers."""

from __future__ import annotations

from tests.sharing.web import cookie_attributes
from ussycode.auth.cookies import SESSION_COOKIE, clear_cookie, parse_cookie_header, set_cookie


def test_set_cookie_attributes() -> None:
    name, value, attributes = cookie_attributes(set_cookie(SESSION_COOKIE, "abc", 60))
    assert name == "__Host-ussycode-session"
    assert value == "abc"
    assert "domain" not in attributes
    assert attributes["path"] == "/"
    assert attributes["max-age"] == "60"
    assert "secure" in attributes
    assert "httponly" in attributes
    assert attributes["samesite"] == "Lax"


def test_clear_cookie_expires_now() -> None:
    name, value, attributes = cookie_attributes(clear_cookie(SESSION_COOKIE))
    assert (name, value) == (SESSION_COOKIE, "")
    assert attributes["max-age"] == "0"
    assert "domain" not in attributes


def test_parse_cookie_header_values() -> None:
    cookies = parse_cookie_header(["a=1; __Host-ussycode-session=tok", 'b="quoted"; a=2'])
    assert cookies["a"] == ["1", "2"]
    assert cookies["__Host-ussycode-session"] == ["tok"]
    assert cookies["b"] == ["quoted"]


def test_parse_cookie_header_skips_malformed() -> None:
    cookies = parse_cookie_header(['bad"cookie; novalue; =x; ;; a=b"c; __Host-ussycode-session=tok'])
    assert cookies["__Host-ussycode-session"] == ["tok"]
    assert cookies["a"] == ['b"c']
    assert "novalue" not in cookies


def test_parse_cookie_header_caps_repeats() -> None:
    cookies = parse_cookie_header(["; ".join(f"x={index}" for index in range(100))])
    assert cookies["x"] == ["0", "1", "2", "3"]


def test_parse_cookie_header_empty() -> None:
    assert parse_cookie_header([]) == {}
    assert parse_cookie_header([""]) == {}
