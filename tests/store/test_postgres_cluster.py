"""Several daemons on one PostgreSQL store (issue 16 points 3, 4): the outbox's rows are
claimed by one daemon, a dead daemon's claims and `sending` rows are taken over, and each
daemon replaces only its own heartbeats. Against a real PostgreSQL."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from devkit.postgres import PostgresServer
from engage_listener.config.model import StoreConfig
from engage_listener.store.interface import Heartbeat, NewAck, NewCase, NewMessage, Store
from engage_listener.store.open import build_store
from tests.support.postgres import fresh_database

MessageFactory = Callable[..., NewMessage]  # the `message` fixture


@pytest.fixture
async def daemons(
    postgres_server: PostgresServer,
) -> AsyncIterator[tuple[Store, Store, Callable[[str], None]]]:
    """Stores of daemons "A" and "B" on one new database, both alive; `kill(id)` makes a
    daemon's heartbeat stale, as a dead daemon's is."""
    url = fresh_database(postgres_server)
    config = StoreConfig(Path("unused"), url=url, lease_seconds=30)
    a, b = build_store(config, owner="A"), build_store(config, owner="B")
    await a.open()
    await b.open()
    database = url.rsplit("/", 1)[1]
    postgres_server.sql(
        "INSERT INTO daemons (id, host, pid, started_at, heartbeat_at) VALUES"
        " ('A', 'h', 1, now(), now()), ('B', 'h', 2, now(), now())",
        database=database,
    )

    def kill(daemon: str) -> None:
        postgres_server.sql(
            f"UPDATE daemons SET heartbeat_at = now() - interval '1 hour' WHERE id = '{daemon}'",
            database=database,
        )

    yield a, b, kill
    await a.close()
    await b.close()


async def _queue(store: Store, message: MessageFactory, recipient: str) -> int:
    async with store.transaction() as tx:
        case = await tx.create_case(NewCase("L", None, recipient, "", "S", "s"))
        row = await tx.add_message(case.id, message())
        ack = NewAck("L", case.id, row, recipient, "Re: S", "<ack@example.com>", b"MIME")
        return await tx.add_outbox(ack)


async def test_a_live_daemons_claims_are_its_own_a_dead_ones_are_taken_over(
    daemons: tuple[Store, Store, Callable[[str], None]], message: MessageFactory
) -> None:
    a, b, kill = daemons
    first, second = (
        await _queue(a, message, "x@example.com"),
        await _queue(a, message, "y@example.com"),
    )
    now = time.time()
    assert [r.id for r in await a.due_outbox(now, 10)] == [first, second]
    assert await b.due_outbox(now, 10) == []  # A is alive: its rows are not B's to send
    assert await a.update_outbox(first, "sending")
    assert await b.stranded_outbox() == []  # A is sending it
    kill("A")
    assert await b.stranded_outbox() == [first]  # left `sending` by a dead daemon
    assert [r.id for r in await b.due_outbox(now, 10)] == [second]  # its claim taken over
    assert not await a.update_outbox(second, "pending", attempts=1)  # A (back?) must not
    assert not await a.update_outbox(second, "sending")  # send it now: nothing written
    assert [r.attempts for r in await b.due_outbox(now, 10)] == [0]
    assert await b.update_outbox(second, "sending")


async def test_each_daemon_replaces_only_its_own_heartbeats(
    daemons: tuple[Store, Store, Callable[[str], None]],
) -> None:
    a, b, _ = daemons

    def beat(listener: str, pid: int) -> Heartbeat:
        return Heartbeat(
            listener, "idle", pid, None, None, 0, None, None, "2026-12-03T17:00:00+00:00"
        )

    await a.write_heartbeats([beat("L1", 1), beat("L2", 1)])
    await b.write_heartbeats([beat("L3", 2)])
    assert [(h.listener, h.pid) for h in await a.heartbeats()] == [("L1", 1), ("L2", 1), ("L3", 2)]
    await b.write_heartbeats([beat("L2", 2), beat("L3", 2)])  # B took L2 over
    assert [(h.listener, h.pid) for h in await a.heartbeats()] == [("L1", 1), ("L2", 2), ("L3", 2)]
    await a.write_heartbeats([])  # A stops
    assert [(h.listener, h.pid) for h in await b.heartbeats()] == [("L2", 2), ("L3", 2)]
