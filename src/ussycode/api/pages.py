"""HTML pages of the browser login: small, self-contained, and never cached or framed."""

from __future__ import annotations

import html
from collections.abc import Sequence

from aiohttp import web

# The pages load nothing, run no script, and may not be framed. Forms post to the page's own
# host; form-action is left out because Chrome applies it to the redirect that follows a post.
SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; "
    "base-uri 'none'",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
}

_STYLE = (
    "body{font-family:sans-serif;max-width:40em;margin:4em auto;padding:0 1em;line-height:1.5}"
    "code{background:#eee;padding:.1em .3em}input[type=text]{width:100%;padding:.4em}"
    "button{padding:.4em 1em;margin-top:.5em}"
)


def escape(text: str) -> str:
    return html.escape(text, quote=True)


def render(title: str, blocks: Sequence[str]) -> str:
    """Return a whole page; `title` is plain text and `blocks` are HTML that is already escaped."""
    body = "\n".join(blocks)
    return (
        "<!doctype html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title><style>{_STYLE}</style></head>\n"
        f"<body>\n<h1>{escape(title)}</h1>\n{body}\n</body></html>\n"
    )


def page_response(status: int, title: str, blocks: Sequence[str]) -> web.Response:
    response = web.Response(status=status, text=render(title, blocks), content_type="text/html")
    response.headers.update(SECURITY_HEADERS)
    return response


def redirect(location: str, *, status: int = 302) -> web.Response:
    """Return a redirect with the page headers, so that no cache keeps it."""
    response = web.Response(status=status, text=f"See {location}\n", content_type="text/plain")
    response.headers.update(SECURITY_HEADERS)
    response.headers["Location"] = location
    return response


def paragraph(html_text: str) -> str:
    return f"<p>{html_text}</p>"


def form(
    action: str, button: str, fields: dict[str, str], *, text_field: tuple[str, str] | None = None
) -> str:
    """Return a POST form with hidden `fields`, and a text input (name, label) if given."""
    parts = [f'<form method="post" action="{escape(action)}">']
    if text_field is not None:
        name, label = text_field
        parts.append(
            f'<label for="{escape(name)}">{escape(label)}</label>'
            f'<input type="text" id="{escape(name)}" name="{escape(name)}" autocomplete="off">'
        )
    for name, value in fields.items():
        parts.append(f'<input type="hidden" name="{escape(name)}" value="{escape(value)}">')
    parts.append(f'<button type="submit">{escape(button)}</button></form>')
    return "".join(parts)
