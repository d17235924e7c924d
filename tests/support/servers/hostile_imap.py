"""A scripted, hostile IMAP server on 127.0.0.1 that records every byte it receives.

Enough IMAP for a listener to log in, select, search and fetch one mail (UID 1); then
it misbehaves as told: no STARTTLS (or a refused one), LOGIN/AUTHENTICATE answered with
a wrong tag, BAD (echoing the command, secrets and all) or a dropped connection, and a
FETCH of the body that never ends (an endless literal, a trickle, a line without CRLF).
Also: a sampler of this process's resident memory, and a listener wired to the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

from engage_listener.clock import SystemClock
from engage_listener.config.model import ListenerConfig
from engage_listener.service.build import build_listener, endpoint_for
from engage_listener.sources.imap.listener import Listener
from engage_listener.sources.imap.session import ImapSession
from engage_listener.sources.imap.text import ImapEndpoint, ImapLimits
from engage_listener.store.sqlite.store import SqliteStore
from tests.support.helpers import server_listener_config

PASSWORD = "Hostile-Pa55word-7f3e"  # searched for in every byte received
MAIL = (
    b"From: Cliente <cliente@example.com>\r\nTo: soporte@example.org\r\n"
    b"Subject: Hola\r\nMessage-ID: <h1@example.com>\r\n\r\nNecesito ayuda.\r\n"
)
STREAM_CAP = 600 * 1024 * 1024  # bytes a hostile stream sends at most (so old code ends)
CHUNK = b"x" * (1024 * 1024)


@dataclasses.dataclass
class Behaviour:
    """What the server does. `login`: ok, wrong-tag, bad, drop. `body`: normal,
    endless-literal, trickle, endless-line. `starttls`: absent, refused."""

    starttls: str = "absent"
    login: str = "ok"
    body: str = "normal"
    trickle_every: float = 0.25
    search_all: bytes | None = None  # the whole untagged answer to UID SEARCH ALL


class HostileImap:
    """Serve `Behaviour` to every connection; `received` holds all bytes from clients."""

    def __init__(self, behaviour: Behaviour | None = None) -> None:
        self.behaviour = behaviour or Behaviour()
        self.received = bytearray()
        self.connections = 0
        self.streamed = 0  # bytes of hostile FETCH data sent
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> HostileImap:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def capabilities(self) -> str:
        caps = "IMAP4rev1 AUTH=XOAUTH2 SASL-IR UIDPLUS MOVE"
        return caps + (" STARTTLS" if self.behaviour.starttls != "absent" else "")

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        try:
            writer.write(b"* OK hostile IMAP ready\r\n")
            while line := await reader.readline():
                self.received += line
                if not await self._answer(line.rstrip(b"\r\n"), writer):
                    break
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._tasks.discard(task)
            writer.close()

    async def _answer(self, line: bytes, writer: asyncio.StreamWriter) -> bool:
        """Answer one command line; False to drop the connection."""
        tag, _, rest = line.partition(b" ")
        command = rest.split(b" ", 1)[0].upper()
        words = rest.upper().split()
        ok = tag + b" OK done\r\n"
        if command == b"CAPABILITY":
            writer.write(f"* CAPABILITY {self.capabilities()}\r\n".encode() + ok)
        elif command == b"STARTTLS":
            writer.write(tag + b" NO not today\r\n")
        elif command in (b"LOGIN", b"AUTHENTICATE"):
            return self._login(tag, line, writer)
        elif command == b"SELECT":
            writer.write(b"* 1 EXISTS\r\n* OK [UIDVALIDITY 7] ok\r\n" + ok)
        elif command == b"LIST":
            writer.write(b'* LIST (\\Noselect) "/" ""\r\n' + ok)
        elif command == b"LOGOUT":
            writer.write(b"* BYE bye\r\n" + ok)
            return False
        elif words[:3] == [b"UID", b"SEARCH", b"ALL"] and self.behaviour.search_all is not None:
            writer.write(self.behaviour.search_all + ok)
        elif words[:2] == [b"UID", b"SEARCH"]:
            writer.write(b"* SEARCH 1\r\n" + ok)
        elif words[:2] == [b"UID", b"FETCH"] and b"RFC822.SIZE" in words[-1]:
            size = len(MAIL)
            meta = f'* 1 FETCH (UID 1 RFC822.SIZE {size} INTERNALDATE "01-Jan-2026 10:00:00 +0000")'
            writer.write(meta.encode() + b"\r\n" + ok)
        elif words[:2] == [b"UID", b"FETCH"]:
            await self._body(tag, writer)
        else:  # NOOP, STATUS, CREATE, UID MOVE, ...
            writer.write(ok)
        return True

    def _login(self, tag: bytes, line: bytes, writer: asyncio.StreamWriter) -> bool:
        how = self.behaviour.login
        if how == "drop":
            return False
        if how == "wrong-tag":
            writer.write(b"ZZ99 OK you are in\r\n")
        elif how == "bad":  # a server that quotes the whole command back
            writer.write(tag + b" BAD unknown arguments in: " + line + b"\r\n")
        else:
            writer.write(tag + b" OK logged in\r\n")
        return True

    async def _body(self, tag: bytes, writer: asyncio.StreamWriter) -> None:
        how = self.behaviour.body
        if how == "normal":
            head = f"* 1 FETCH (UID 1 BODY[] {{{len(MAIL)}}}\r\n".encode()
            writer.write(head + MAIL + b")\r\n" + tag + b" OK done\r\n")
        elif how == "endless-literal":
            writer.write(b"* 1 FETCH (UID 1 BODY[] {10000000000}\r\n")
            await self._stream(writer)
        elif how == "endless-line":
            writer.write(b"* 1 FETCH (UID 1 FLAGS (")
            await self._stream(writer)
        elif how == "trickle":
            writer.write(f"* 1 FETCH (UID 1 BODY[] {{{len(MAIL)}}}\r\n".encode())
            for byte in MAIL:
                await writer.drain()
                writer.write(bytes([byte]))
                self.streamed += 1
                await asyncio.sleep(self.behaviour.trickle_every)

    async def _stream(self, writer: asyncio.StreamWriter) -> None:
        while self.streamed < STREAM_CAP:
            writer.write(CHUNK)
            self.streamed += len(CHUNK)
            await writer.drain()


def rss_bytes() -> int:
    """This process's resident memory now (VmRSS)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


@contextlib.asynccontextmanager
async def peak_rss() -> AsyncIterator[list[int]]:
    """Sample resident memory every 20 ms; yields [baseline, peak] (peak updated live)."""
    sample = [rss_bytes(), rss_bytes()]

    async def watch() -> None:
        while True:
            sample[1] = max(sample[1], rss_bytes())
            await asyncio.sleep(0.02)

    task = asyncio.create_task(watch())
    try:
        yield sample
    finally:
        task.cancel()
        sample[1] = max(sample[1], rss_bytes())


def hostile_config(port: int, **changes: Any) -> ListenerConfig:
    """A listener on the hostile server (plain TCP, as it offers no STARTTLS)."""
    changes.setdefault("id", "Hostile")
    return server_listener_config("127.0.0.1", port, "victim@example.org", PASSWORD, **changes)


def endpoint(cfg: ListenerConfig, **changes: Any) -> ImapEndpoint:
    """The listener's endpoint with short timeouts; `limits` may shrink the bounds."""
    return dataclasses.replace(endpoint_for(cfg), timeout=changes.pop("timeout", 5.0), **changes)


@contextlib.asynccontextmanager
async def running_listener(
    cfg: ListenerConfig, db: Path, ep: ImapEndpoint | None = None
) -> AsyncIterator[Listener]:
    """The real listener (real store, real clock) running against `cfg`, `ep` if given."""
    store, stop = SqliteStore(db), asyncio.Event()
    await store.open()
    listener = build_listener(cfg, store, SystemClock(), stop)
    if ep is not None:
        chosen = ep

        async def connect() -> ImapSession:
            return await ImapSession.open(chosen)

        listener.connect = connect
    task = asyncio.create_task(listener.run())
    try:
        yield listener
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)
        await store.close()


def short_fetch(**changes: Any) -> ImapLimits:
    """Bounds with a 1 s FETCH allowance, so deadline tests take seconds."""
    return dataclasses.replace(ImapLimits(fetch_allowance=1.0), **changes)


def chain(exc: BaseException) -> Iterator[BaseException]:
    """`exc` and every exception it was raised from or during."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__
