"""GuestAttachment: input before the guest session exists is kept, input after it ended is not taken."""

from __future__ import annotations

import asyncio

from ussycode.ssh.attach import GuestAttachment


def test_attach_input_before_and_after_session() -> None:
    async def scenario() -> tuple[bool, bool, bool]:
        written: list[bytes] = []
        attachment = GuestAttachment(lambda data, datatype: written.append(data))
        early = attachment.feed(b"ls\r")
        attachment.eof()
        attachment.resize(80, 24, 0, 0)
        attachment.session_lost(None)
        late = attachment.feed(b"whoami\r")
        return early, late, attachment.ended

    early, late, ended = asyncio.run(scenario())
    assert early is True
    assert late is False
    assert ended is True
