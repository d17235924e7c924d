"""A recording SMTP server on loopback that never offers STARTTLS (or refuses it).

Each test gets one with `async with RecordingSmtp(...) as server:` on the test's own
event loop; `received` holds every byte any client sent, for "no password, no token
ever arrived" checks. AUTH (PLAIN, LOGIN, XOAUTH2) accepts anything.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from types import TracebackType


@dataclass
class RecordingSmtp:
    """`offer_starttls`: advertise it (and answer it 454, a failed upgrade)."""

    offer_starttls: bool = False
    host: str = "127.0.0.1"
    port: int = 0
    received: bytearray = field(default_factory=bytearray)
    logins: int = 0
    messages: int = 0

    async def __aenter__(self) -> RecordingSmtp:
        self._server = await asyncio.start_server(self._session, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._server.close()
        await self._server.wait_closed()

    async def _line(self, reader: asyncio.StreamReader) -> bytes:
        line = await reader.readline()
        self.received += line
        return line

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 recording ESMTP\r\n")
        try:
            while line := await self._line(reader):
                reply = await self._answer(line, reader, writer)
                writer.write(reply)
                await writer.drain()
                if reply.startswith(b"221"):
                    break
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def _answer(
        self, line: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bytes:
        verb = line.split(b" ", 1)[0].strip().upper()
        if verb == b"EHLO":
            tls = b"250-STARTTLS\r\n" if self.offer_starttls else b""
            return b"250-recording\r\n" + tls + b"250 AUTH PLAIN LOGIN XOAUTH2\r\n"
        if verb == b"STARTTLS":
            return b"454 4.7.0 TLS not available due to temporary reason\r\n"
        if verb == b"AUTH":
            if len(line.split()) < 3:  # no initial response: it comes after a 334
                writer.write(b"334 \r\n")
                await self._line(reader)
            self.logins += 1
            return b"235 2.7.0 accepted\r\n"
        if verb == b"DATA":
            return b"354 go ahead\r\n"
        if line == b".\r\n":
            self.messages += 1
            return b"250 2.0.0 queued\r\n"
        if verb == b"QUIT":
            return b"221 bye\r\n"
        return b"250 ok\r\n" if verb in (b"MAIL", b"RCPT", b"RSET", b"NOOP") else b""
