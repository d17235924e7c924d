"""A CRM's webhook receiver on loopback (aiohttp, in its own thread), for the webhook tests.

It checks every request the way the README tells a CRM to (signature over timestamp and
body with the shared secret, timestamp fresh, JSON body whose ``id`` is the event id
header) and records what it saw, so tests assert on what a receiver would accept. Its
answers are scripted per request (`script`): a status, headers (Retry-After), a delay
before answering (timeouts), a body of any size (oversize answers), a body that never
ends (a receiver that stalls after its status line). Without a script it answers 200.

Over HTTP, or HTTPS with a private CA (`devkit.certs.write_certs`) when given a directory.
Its port stays the same across `stop` and `start`, so a test can take the receiver down
for a while and bring it back where the daemon expects it.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import socket
import ssl
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from devkit.certs import write_certs

MAX_SKEW = 300  # seconds a timestamp may differ from the receiver's clock


@dataclass(frozen=True)
class Reply:
    """One scripted answer."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # seconds before the status line
    body_size: int = 0  # bytes of body streamed after the status line
    stall: bool = False  # after the status line, send nothing more until stopped


@dataclass
class Received:
    """One request as the receiver saw it."""

    event: str
    event_id: str
    timestamp: str
    signature_ok: bool
    body: dict[str, Any]
    headers: dict[str, str]
    status: int | None = None  # what was answered (None: the client left first)


class WebhookReceiver:
    def __init__(self, secret: str, directory: Path | None = None, path: str = "/hooks") -> None:
        self.secret = secret
        self.path = path
        self.received: list[Received] = []
        self._script: deque[Reply] = deque()
        self._lock = threading.Lock()
        self._tls: ssl.SSLContext | None = None
        self.ca_file: Path | None = None
        if directory is not None:
            directory.mkdir(parents=True, exist_ok=True)
            self.ca_file, cert, key = write_certs(directory)
            self._tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            self._tls.load_cert_chain(cert, key)
        with socket.socket() as probe:  # a free port, kept across stop/start
            probe.bind(("127.0.0.1", 0))
            self.port = int(probe.getsockname()[1])
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._stopping = threading.Event()

    @property
    def url(self) -> str:
        host = "localhost" if self._tls else "127.0.0.1"
        return f"{'https' if self._tls else 'http'}://{host}:{self.port}{self.path}"

    # ----- control ------------------------------------------------------------------
    def script(self, *replies: Reply) -> None:
        """Answer the next requests with these, in order (then 200 again)."""
        with self._lock:
            self._script.extend(replies)

    def start(self) -> WebhookReceiver:
        self._stopping.clear()
        ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, args=(ready,), daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("webhook receiver did not start")
        return self

    def stop(self) -> None:
        if self._loop is None or self._thread is None:
            return
        self._stopping.set()
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(15)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop = self._thread = None

    def __enter__(self) -> WebhookReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ----- what was seen ------------------------------------------------------------
    def requests(self) -> list[Received]:
        with self._lock:
            return list(self.received)

    def accepted(self) -> list[Received]:
        """Requests answered 2xx, in order."""
        return [r for r in self.requests() if r.status is not None and 200 <= r.status < 300]

    def accepted_ids(self) -> list[str]:
        return [r.event_id for r in self.accepted()]

    # ----- the server ---------------------------------------------------------------
    def _serve(self, ready: threading.Event) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        app = web.Application()
        app.router.add_post(self.path, self._handle)
        self._runner = web.AppRunner(app, shutdown_timeout=0.5)
        loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, "127.0.0.1", self.port, ssl_context=self._tls,
                           reuse_address=True)  # fmt: skip
        loop.run_until_complete(site.start())
        ready.set()
        loop.run_forever()
        loop.close()

    async def _shutdown(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def _verify(self, request: web.Request, body: bytes) -> bool:
        """As a CRM must: HMAC-SHA256(secret, timestamp + "." + body), fresh timestamp."""
        timestamp = request.headers.get("X-Engage-Timestamp", "")
        given = request.headers.get("X-Engage-Signature", "")
        mac = hmac.new(self.secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
        fresh = timestamp.isdigit() and abs(time.time() - int(timestamp)) < MAX_SKEW
        return fresh and hmac.compare_digest(given, "sha256=" + mac.hexdigest())

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        seen = Received(
            event=request.headers.get("X-Engage-Event", ""),
            event_id=request.headers.get("X-Engage-Event-Id", ""),
            timestamp=request.headers.get("X-Engage-Timestamp", ""),
            signature_ok=self._verify(request, body),
            body=json.loads(body),
            headers=dict(request.headers),
        )
        with self._lock:
            self.received.append(seen)
            reply = self._script.popleft() if self._script else Reply()
        if reply.delay:
            await asyncio.sleep(reply.delay)
        status = reply.status if seen.signature_ok else 401
        response = web.StreamResponse(status=status, headers=reply.headers)
        try:
            await response.prepare(request)
            seen.status = status
            await self._body(response, reply)
        except (ConnectionError, asyncio.CancelledError):
            pass
        return response

    async def _body(self, response: web.StreamResponse, reply: Reply) -> None:
        if reply.stall:
            while not self._stopping.is_set():
                await asyncio.sleep(0.05)
            return
        left, chunk = reply.body_size, b"x" * 65536
        while left > 0 and not self._stopping.is_set():
            await response.write(chunk[:left])
            left -= len(chunk)
        await response.write_eof()
