"""The optional Prometheus endpoint (`Metrics Listen="host:port"`) and `/healthz`.

A tiny asyncio HTTP server rather than prometheus-client's threaded one: it runs
in the daemon's loop, reads the same figures as `engage-listener status` at each
scrape (nothing to keep in sync between scrapes), and bounds every request in
size and time so a stray client cannot tie it up.

Decisions:
- At most `max_connections` (32) connections are open at once, so idle clients
  cannot use up the daemon's file descriptors (300 idle loopback connections
  did). A connection over the cap first evicts the oldest one still waiting for
  its request line (a scraper sends it at once; an idle socket never does); when
  every slot is busy answering, the newcomer is closed at once.
- The request head must arrive within `read_timeout` (5 s), the whole exchange
  within `request_timeout` (10 s).
- Labels are listener IDs and state names, values numbers: no error text is
  ever exported, and the text of a failed collection is scrubbed of secrets.
- The owner (several daemons on one PostgreSQL) is one info gauge,
  `engage_listener_owner_info{listener,host,pid} 1`, not a label on every series: a
  take-over would otherwise start new series for every figure (breaking `rate()` of the
  processed counter and every alert's history); join it where the owner is wanted
  (`* on(listener) group_left(host, pid) engage_listener_owner_info`).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence

from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from engage_listener.observe.logs import scrub
from engage_listener.observe.status import ListenerStatus

STATES = (
    "starting",
    "connecting",
    "idle",
    "processing",
    "paused",
    "backing off",
    "failing",
    "stopped",
)
MAX_REQUEST = 8192  # bytes of request line and headers
REQUEST_TIMEOUT = 10.0  # seconds for a whole exchange, collection included
READ_TIMEOUT = 5.0  # seconds for the request line and headers to arrive
MAX_CONNECTIONS = 32
REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}

Collect = Callable[[], Awaitable[list[ListenerStatus]]]


def _epoch(iso: str | None) -> float | None:
    if not iso:
        return None
    moment = dt.datetime.fromisoformat(iso)
    return (moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)).timestamp()


class StatusCollector:
    """A prometheus-client collector over one snapshot of listener statuses."""

    def __init__(self, rows: Sequence[ListenerStatus]) -> None:
        self.rows = rows

    def collect(self) -> Iterator[Metric]:
        def gauge(name: str, doc: str) -> GaugeMetricFamily:
            return GaugeMetricFamily(f"engage_listener_{name}", doc, labels=["listener"])

        up = gauge("up", "1 while the listener's heartbeat is fresh and it is not failing")
        state = GaugeMetricFamily(
            "engage_listener_state", "The listener's state (one-hot)", labels=["listener", "state"]
        )
        success = gauge("last_success_timestamp_seconds", "End of the last successful cycle")
        today = gauge("processed_today", "Mails processed since 00:00 (listener time zone)")
        backlog = gauge("backlog", "Mails waiting in the input folder or mailbox")
        oldest = gauge("oldest_unprocessed_age_seconds", "Age of the oldest waiting mail")
        held = gauge("quarantined", "Mails held in quarantine")
        acks = gauge("pending_acknowledgements", "Acknowledgements not yet sent")
        processed = CounterMetricFamily(
            "engage_listener_processed", "Mails processed (ledger rows)", labels=["listener"]
        )
        owner = GaugeMetricFamily(
            "engage_listener_owner_info",
            "1 for the daemon (host, pid) running the listener",
            labels=["listener", "host", "pid"],
        )
        for r in self.rows:
            lid = [r.listener]
            if r.owner is not None:
                owner.add_metric([r.listener, r.owner.host, str(r.owner.pid)], 1.0)
            up.add_metric(lid, 1.0 if r.alive and r.state != "failing" else 0.0)
            for name in (*STATES, *([r.state] if r.state not in STATES else [])):
                state.add_metric([r.listener, name], 1.0 if name == r.state else 0.0)
            for family, value in (
                (success, _epoch(r.last_success_at)),
                (today, r.processed_today),
                (backlog, r.backlog),
                (oldest, r.oldest_unprocessed_age),
                (held, r.quarantined),
                (acks, r.pending_acks),
                (processed, r.processed_total),
            ):
                if value is not None:  # unknown is absent, not zero
                    family.add_metric(lid, float(value))
        yield from (up, state, success, today, backlog, oldest, held, acks, processed, owner)


def stale_listeners(
    rows: Sequence[ListenerStatus], now: float, since: float, max_age: float
) -> list[str]:
    """One line per listener without a successful cycle in `max_age` seconds.

    A listener that never succeeded is measured from `since` (server start), so a
    fresh daemon is healthy while it connects; a paused listener is healthy, since
    the pause is the operator's choice.
    """
    lines = []
    for r in rows:
        if r.state == "paused" or r.paused_until:
            continue
        last = _epoch(r.last_success_at)
        age = now - (last if last is not None else since)
        if age > max_age:
            when = r.last_success_at or "never"
            lines.append(f"{r.listener}: no successful cycle for {age:.0f} s (last: {when})")
    return lines


class MetricsServer:
    """GET /metrics and GET /healthz; one request per connection."""

    def __init__(
        self,
        host: str,
        port: int,
        collect: Collect,
        *,
        health_max_age: float,
        clock: Callable[[], float] = time.time,
        max_connections: int = MAX_CONNECTIONS,
        read_timeout: float | None = None,
        request_timeout: float | None = None,
    ) -> None:
        self.max_connections = max_connections
        self.read_timeout = read_timeout  # None: READ_TIMEOUT, REQUEST_TIMEOUT when used
        self.request_timeout = request_timeout
        self._open: set[asyncio.StreamWriter] = set()  # counted against the cap
        self._waiting: dict[asyncio.StreamWriter, None] = {}  # no request yet, oldest first
        self.host = host
        self.port = port
        self.collect = collect
        self.health_max_age = health_max_age
        self.clock = clock
        self._server: asyncio.Server | None = None
        self._started = clock()
        self._tasks: set[asyncio.Task[object]] = set()

    async def start(self) -> None:
        self._started = self.clock()
        self._server = await asyncio.start_server(
            self._handle, self.host, self.port, limit=MAX_REQUEST
        )
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._server is None:
            return
        server, self._server = self._server, None
        server.close()
        for task in list(self._tasks):
            task.cancel()
        await server.wait_closed()

    def _admit(self, writer: asyncio.StreamWriter) -> bool:
        """Count the connection against the cap, evicting the oldest idle one if need be."""
        if len(self._open) >= self.max_connections:
            if not self._waiting:
                return False
            oldest = next(iter(self._waiting))
            self._forget(oldest)
            oldest.transport.abort()  # its handler sees EOF and ends
        self._open.add(writer)
        self._waiting[writer] = None
        return True

    def _forget(self, writer: asyncio.StreamWriter) -> None:
        self._open.discard(writer)
        self._waiting.pop(writer, None)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self._admit(writer):
            writer.transport.abort()  # over the cap: the descriptor is freed at once
            return
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            async with asyncio.timeout(self.request_timeout or REQUEST_TIMEOUT):
                response = await self._respond(reader, writer)
                if response is not None:
                    writer.write(response)
                    await writer.drain()
        except (TimeoutError, ConnectionError):
            pass  # the client is slow or gone; nothing to tell it
        finally:
            self._forget(writer)
            if task is not None:
                self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(OSError, asyncio.CancelledError):
                await writer.wait_closed()

    async def _respond(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bytes | None:
        try:
            async with asyncio.timeout(self.read_timeout or READ_TIMEOUT):
                head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError:
            return _response(431, "request too large\n")
        except (asyncio.IncompleteReadError, TimeoutError):
            return None  # gone, evicted, or idle past the read deadline
        finally:
            self._waiting.pop(writer, None)  # answering now: no longer evictable
        parts = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            return _response(400, "bad request\n")
        return await self._route(parts[0], parts[1].split("?", 1)[0])

    async def _route(self, method: str, target: str) -> bytes:
        if target not in {"/metrics", "/healthz"}:
            return _response(404, "not found\n", head=method == "HEAD")
        if method not in {"GET", "HEAD"}:
            return _response(405, "only GET\n", extra="Allow: GET, HEAD\r\n")
        try:
            rows = await self.collect()
        except Exception as exc:
            code = 500 if target == "/metrics" else 503
            text = scrub(f"cannot read the status: {exc}\n")
            return _response(code, text, head=method == "HEAD")
        if target == "/metrics":
            body = generate_latest(StatusCollector(rows))
            return _response(200, body, CONTENT_TYPE_PLAIN_0_0_4, head=method == "HEAD")
        stale = stale_listeners(rows, self.clock(), self._started, self.health_max_age)
        text = "".join(f"{line}\n" for line in stale) or "ok\n"
        return _response(503 if stale else 200, text, head=method == "HEAD")


def _response(
    code: int,
    body: str | bytes,
    content_type: str = "text/plain; charset=utf-8",
    *,
    head: bool = False,
    extra: str = "",
) -> bytes:
    data = body.encode() if isinstance(body, str) else body
    status = (
        f"HTTP/1.1 {code} {REASONS[code]}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(data)}\r\nConnection: close\r\n{extra}\r\n"
    )
    return status.encode("latin-1") + (b"" if head else data)
