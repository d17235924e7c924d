"""A small TCP proxy on loopback that can cut its connections at chosen points.

It forwards every connection to one target (the sandbox's plain IMAP port) and
runs its own event loop in a thread, so synchronous and asyncio tests can both use
it. It can hide STARTTLS from the server's greeting, so the client stays in clear
text and the proxy sees every command; then it can be told to cut every current
connection when a client line matches a pattern (before forwarding it, or after
forwarding it and letting through some bytes of the server's answer), or after a
number of bytes from the server; or freeze them (a peer that went silent).

A cut closes both sides at once: the client sees the server vanish, the server
sees the client vanish (and, when the command was forwarded, runs it anyway).
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field
from types import TracebackType


@dataclass
class _Rule:
    """Cut when the `nth` client chunk containing `pattern` is seen."""

    pattern: bytes
    nth: int = 1
    forward: bool = True  # send the matching command to the server before cutting
    after_server_bytes: int = 0  # bytes of the server's answer let through before the cut
    seen: int = 0


@dataclass(eq=False)
class _Conn:
    client: asyncio.StreamWriter
    server: asyncio.StreamWriter
    logged_in: bool = False
    tail: bytes = b""
    server_bytes: int = 0
    remaining: int | None = None  # armed: server bytes still let through before the cut
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    frozen: bool = False  # a silent dead peer: bytes are swallowed both ways


class TcpProxy:
    """127.0.0.1:`port` -> `target_host`:`target_port`, with cuts on demand."""

    host = "127.0.0.1"

    def __init__(self, target_host: str, target_port: int, *, strip_starttls: bool = False):
        self.target = (target_host, target_port)
        self.strip_starttls = strip_starttls
        self.port = 0
        self.connections = 0  # accepted so far
        self.cuts = 0  # connections cut so far
        self.cut_event = threading.Event()
        self._lock = threading.Lock()
        self._rules: list[_Rule] = []
        self._cut_after: int | None = None
        self._conns: set[_Conn] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._shutdown: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()

    # ----- control (any thread) -----------------------------------------------------
    def cut_on_client(
        self,
        pattern: bytes,
        *,
        nth: int = 1,
        forward: bool = True,
        after_server_bytes: int = 0,
    ) -> None:
        """One-shot: cut at the `nth` client chunk containing `pattern`."""
        with self._lock:
            self._rules.append(_Rule(pattern, nth, forward, after_server_bytes))

    def cut_after_server_bytes(self, count: int) -> None:
        """One-shot: cut the first connection whose server side has sent `count` bytes."""
        with self._lock:
            self._cut_after = count

    def cut_all(self) -> None:
        """Cut every open connection now."""
        loop = self._loop
        if loop is None:
            return

        def cut() -> None:
            for conn in list(self._conns):
                self._cut(conn)

        loop.call_soon_threadsafe(cut)

    def freeze_all(self) -> None:
        """Every open connection goes silent both ways, without closing (a dead peer)."""
        loop = self._loop
        if loop is None:
            return

        def freeze() -> None:
            for conn in self._conns:
                conn.frozen = True

        loop.call_soon_threadsafe(freeze)

    # ----- life cycle ---------------------------------------------------------------
    def start(self) -> TcpProxy:
        self._thread = threading.Thread(target=self._run, name="tcp-proxy", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the TCP proxy did not start")
        return self

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        shutdown = self._shutdown
        if shutdown is not None:
            loop.call_soon_threadsafe(shutdown.set)
        thread.join(10)
        self._loop = self._thread = None

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        shutdown = self._shutdown = asyncio.Event()
        server = self._server = await asyncio.start_server(self._handle, self.host, 0)
        self.port = int(server.sockets[0].getsockname()[1])
        self._ready.set()
        try:
            await shutdown.wait()
        finally:
            server.close()
            for conn in list(self._conns):
                self._cut(conn, count=False)
            await server.wait_closed()

    # ----- forwarding ---------------------------------------------------------------
    async def _handle(self, creader: asyncio.StreamReader, cwriter: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            sreader, swriter = await asyncio.open_connection(*self.target)
        except OSError:
            cwriter.transport.abort()
            return
        conn = _Conn(cwriter, swriter)
        self._conns.add(conn)
        tasks = {
            asyncio.ensure_future(self._from_client(conn, creader)),
            asyncio.ensure_future(self._from_server(conn, sreader)),
            asyncio.ensure_future(conn.closed.wait()),
        }
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            self._close(conn)

    async def _from_client(self, conn: _Conn, reader: asyncio.StreamReader) -> None:
        while data := await reader.read(65536):
            if conn.frozen:
                continue
            seen = conn.tail + data
            if b" LOGIN " in seen.upper():
                conn.logged_in = True
            rule = self._match(seen, len(conn.tail))
            conn.tail = seen[-200:]
            if rule is not None:
                if not rule.forward:
                    self._cut(conn)
                    return
                # Armed before forwarding, so no byte of the answer can slip through.
                conn.remaining = max(0, rule.after_server_bytes)
            conn.server.write(data)
            await conn.server.drain()

    def _match(self, seen: bytes, old: int) -> _Rule | None:
        """The rule whose pattern ends in the new bytes (after the `old` ones), if it fires."""
        with self._lock:
            for rule in self._rules:
                if seen.find(rule.pattern, max(0, old - len(rule.pattern) + 1)) >= 0:
                    rule.seen += 1
                    if rule.seen >= rule.nth:
                        self._rules.remove(rule)
                        return rule
        return None

    async def _from_server(self, conn: _Conn, reader: asyncio.StreamReader) -> None:
        while data := await reader.read(65536):
            if conn.frozen:
                continue
            if self.strip_starttls and not conn.logged_in:
                data = data.replace(b" STARTTLS", b"")
            with self._lock:
                limit = self._cut_after
                if limit is not None and conn.server_bytes + len(data) >= limit:
                    self._cut_after = None
                    keep = limit - conn.server_bytes
                    conn.remaining = keep if conn.remaining is None else min(keep, conn.remaining)
            conn.server_bytes += len(data)
            if conn.remaining is not None:
                if len(data) >= conn.remaining:
                    if conn.remaining:
                        conn.client.write(data[: conn.remaining])
                        await conn.client.drain()
                    self._cut(conn)
                    return
                conn.remaining -= len(data)
            conn.client.write(data)
            await conn.client.drain()

    def _cut(self, conn: _Conn, *, count: bool = True) -> None:
        if conn.closed.is_set():
            return
        if count:
            self.cuts += 1
            self.cut_event.set()
        self._close(conn)

    def _close(self, conn: _Conn) -> None:
        conn.closed.set()
        self._conns.discard(conn)
        conn.server.transport.abort()  # the server sees the client vanish
        conn.client.close()  # bytes already written still reach the client, then EOF
