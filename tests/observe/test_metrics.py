"""The Prometheus endpoint and /healthz, scraped over real HTTP on loopback."""

from __future__ import annotations

import asyncio
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
from prometheus_client.parser import text_string_to_metric_families

from engage_listener.observe.metrics import MetricsServer
from engage_listener.observe.status import (
    ListenerOwner,
    ListenerStatus,
    read_status,
    write_heartbeats,
)
from engage_listener.store.sqlite.store import SqliteStore

START = 1_700_000_000.0
MAX_AGE = 900.0


def status(listener: str, **changes: object) -> ListenerStatus:
    row = ListenerStatus(
        listener=listener,
        state="idle",
        alive=True,
        last_success_at="2023-11-14T22:13:20+00:00",  # START
        processed_today=7,
        backlog=3,
        oldest_unprocessed_age=42.5,
        quarantined=1,
        pending_acks=2,
        last_error=None,
        paused_until=None,
        heartbeat_at="2023-11-14T22:13:20+00:00",
        processed_total=70,
    )
    return replace(row, **changes)  # type: ignore[arg-type]


class Fixture(SimpleNamespace):
    server: MetricsServer
    rows: list[ListenerStatus]
    now: float
    fail: bool


@pytest.fixture
async def served() -> AsyncIterator[Fixture]:
    fx = Fixture(
        rows=[
            status("A", owner=ListenerOwner("db1.example.org", 4242)),
            status(
                "B",
                state="failing",
                backlog=None,
                last_success_at=None,
                oldest_unprocessed_age=None,
            ),
        ],
        now=START,
        fail=False,
    )

    async def collect() -> list[ListenerStatus]:
        if fx.fail:
            raise RuntimeError("store unavailable")
        return fx.rows

    fx.server = MetricsServer("127.0.0.1", 0, collect, health_max_age=MAX_AGE, clock=lambda: fx.now)
    await fx.server.start()
    try:
        yield fx
    finally:
        await fx.server.stop()


def _get(url: str, method: str = "GET") -> tuple[int, str, str]:
    request = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.headers["Content-Type"], exc.read().decode()


async def get(fx: Fixture, path: str, method: str = "GET") -> tuple[int, str, str]:
    return await asyncio.to_thread(_get, f"http://127.0.0.1:{fx.server.port}{path}", method)


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_metrics(served: Fixture) -> None:
    code, content_type, text = await get(served, "/metrics")
    assert code == 200 and content_type.startswith("text/plain; version=0.0.4")
    found = samples(text)

    def value(name: str, listener: str, **labels: str) -> float | None:
        return found.get(
            (f"engage_listener_{name}", tuple(sorted({"listener": listener, **labels}.items())))
        )

    assert value("up", "A") == 1.0 and value("up", "B") == 0.0
    assert value("state", "A", state="idle") == 1.0
    assert value("state", "A", state="processing") == 0.0
    assert value("state", "B", state="failing") == 1.0
    assert (
        sum(
            v
            for (n, labels), v in found.items()
            if n == "engage_listener_state" and ("listener", "A") in labels
        )
        == 1.0
    )
    assert value("last_success_timestamp_seconds", "A") == START
    assert value("last_success_timestamp_seconds", "B") is None  # unknown, not 0
    assert value("processed_today", "A") == 7.0
    assert value("backlog", "A") == 3.0 and value("backlog", "B") is None
    assert value("oldest_unprocessed_age_seconds", "A") == 42.5
    assert value("quarantined", "B") == 1.0
    assert value("pending_acknowledgements", "A") == 2.0
    assert value("processed_total", "A") == 70.0
    types = {f.name: f.type for f in text_string_to_metric_families(text)}
    # The owner is one info series a listener, not a label on every figure.
    assert value("owner_info", "A", host="db1.example.org", pid="4242") == 1.0
    assert not any(n == "engage_listener_owner_info" and ("listener", "B") in lb for n, lb in found)
    assert all("host" not in dict(lb) for n, lb in found if n != "engage_listener_owner_info")
    assert types["engage_listener_processed"] == "counter"
    assert types["engage_listener_backlog"] == "gauge"

    served.rows = [status("C", alive=False)]  # each scrape reads afresh
    found = samples((await get(served, "/metrics"))[2])
    assert value("up", "C") == 0.0 and value("up", "A") is None


async def test_healthz(served: Fixture) -> None:
    assert await get(served, "/healthz") == (200, "text/plain; charset=utf-8", "ok\n")
    served.now = START + MAX_AGE - 1
    assert (await get(served, "/healthz"))[0] == 200
    served.now = START + MAX_AGE + 10
    code, _, text = await get(served, "/healthz")
    assert code == 503
    # B never succeeded and is measured from the server's start (START, by the fake clock).
    assert text.splitlines() == [
        "A: no successful cycle for 910 s (last: 2023-11-14T22:13:20+00:00)",
        "B: no successful cycle for 910 s (last: never)",
    ]
    served.rows = [
        status("A", last_success_at="2023-11-14T22:28:00+00:00"),
        status("B", state="paused", last_success_at=None),
        status("C", last_success_at=None, paused_until="2030-01-01T00:00:00+00:00"),
    ]
    assert (await get(served, "/healthz"))[:3:2] == (200, "ok\n")


async def test_other_paths_methods_and_collect_failure(served: Fixture) -> None:
    assert (await get(served, "/"))[0] == 404
    assert (await get(served, "/metrics/x"))[0] == 404
    assert (await get(served, "/metrics?name[]=x"))[0] == 200
    assert (await get(served, "/metrics", "POST"))[0] == 405
    head = await get(served, "/healthz", "HEAD")
    assert head[0] == 200 and head[2] == ""
    served.fail = True
    assert await get(served, "/metrics") == (
        500,
        "text/plain; charset=utf-8",
        "cannot read the status: store unavailable\n",
    )
    assert (await get(served, "/healthz"))[0] == 503


async def raw(fx: Fixture, data: bytes, *, close_early: bool = False) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", fx.server.port)
    try:
        writer.write(data)
        await writer.drain()
        if close_early:
            return b""
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
        await writer.wait_closed()


async def test_malformed_requests_do_not_kill_the_server(served: Fixture) -> None:
    assert (await raw(served, b"\x00\xff garbage\r\n\r\n")).startswith(b"HTTP/1.1 400 ")
    assert (await raw(served, b"GET /metrics SPDY/9\r\n\r\n")).startswith(b"HTTP/1.1 400 ")
    assert (await raw(served, b"GET /metrics\r\n\r\n")).startswith(b"HTTP/1.1 400 ")
    huge = b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 20000 + b"\r\n\r\n"
    assert (await raw(served, huge)).startswith(b"HTTP/1.1 431 ")
    await raw(served, b"GET /metr", close_early=True)
    await raw(served, b"", close_early=True)
    answer = await raw(served, b"GET /healthz HTTP/1.0\r\nHost: x\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and answer.endswith(b"\r\n\r\nok\n")
    assert b"Content-Length: 3\r\n" in answer and b"Connection: close\r\n" in answer
    assert (await get(served, "/metrics"))[0] == 200


async def test_slow_client_is_cut_off(served: Fixture, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("engage_listener.observe.metrics.REQUEST_TIMEOUT", 0.2)
    reader, writer = await asyncio.open_connection("127.0.0.1", served.server.port)
    writer.write(b"GET /metrics HTTP/1.1\r\n")  # never finishes the headers
    await writer.drain()
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()
    await writer.wait_closed()
    assert (await get(served, "/healthz"))[0] == 200


async def test_stop_releases_the_port_and_open_connections(served: Fixture) -> None:
    _, writer = await asyncio.open_connection("127.0.0.1", served.server.port)
    await served.server.stop()
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", served.server.port)
    writer.close()
    await served.server.stop()  # twice is harmless


async def test_with_the_real_store(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s.sqlite3")
    await store.open()
    try:
        now = time.time()
        await write_heartbeats(
            store, {"A": SimpleNamespace(state="processing", last_success_at=now - 5, backlog=4)}
        )
        server = MetricsServer(
            "127.0.0.1", 0, lambda: read_status(store, ["A", "Z"]), health_max_age=60
        )
        await server.start()
        try:
            text = await asyncio.to_thread(_get, f"http://127.0.0.1:{server.port}/metrics")
            found = samples(text[2])
            assert found[("engage_listener_up", (("listener", "A"),))] == 1.0
            assert found[("engage_listener_up", (("listener", "Z"),))] == 0.0
            assert found[("engage_listener_state", (("listener", "A"), ("state", "processing")))]
            assert found[("engage_listener_state", (("listener", "Z"), ("state", "stopped")))]
            assert found[("engage_listener_backlog", (("listener", "A"),))] == 4.0
            assert found[
                ("engage_listener_last_success_timestamp_seconds", (("listener", "A"),))
            ] == int(now - 5)
            health = await asyncio.to_thread(_get, f"http://127.0.0.1:{server.port}/healthz")
            assert health[0] == 200  # Z has not succeeded yet, but the server just started
        finally:
            await server.stop()
    finally:
        await store.close()
