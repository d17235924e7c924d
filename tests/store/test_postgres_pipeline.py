"""What the PostgreSQL store sends together (issue 16 point 9), and that what fails where
keeps its meaning: a transaction's BEGIN with its first statement and COMMIT with its last
queued writes; an inline SQL hook's first statement with the queued writes and its
SAVEPOINT; one canceller thread stops an inline statement past its deadline."""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from devkit.postgres import PostgresServer
from engage_listener.config.model import StoreConfig
from engage_listener.errors import StoreError
from engage_listener.store.interface import Store, SyncExecute
from engage_listener.store.open import build_store
from engage_listener.store.postgres.canceller import CANCELLER, Canceller
from tests.support.postgres import RoundTrips, fresh_database

TABLE = "CREATE TABLE notes (n integer)"


@pytest.fixture
async def store(postgres_server: PostgresServer) -> AsyncIterator[Store]:
    url = fresh_database(postgres_server)
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute(TABLE)
    opened = build_store(StoreConfig(Path("unused"), url=url))
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()


def _statement(sql: str) -> Any:
    def work(execute: SyncExecute) -> Any:
        cursor = execute(sql, {})
        row = cursor.fetchone()
        cursor.close()
        return row

    return work


async def _notes(store: Store) -> list[int]:
    return [int(r[0]) for r in await store.query("SELECT n FROM notes ORDER BY n")]  # type: ignore[attr-defined]


async def test_queued_writes_go_with_the_first_statement_and_stay_after_its_failure(
    store: Store,
) -> None:
    async with store.transaction() as tx:
        tx._write("INSERT INTO notes VALUES (1)")  # type: ignore[attr-defined]
        assert tx.run_inline(_statement("SELECT count(*) FROM notes"), time.monotonic() + 30) == (
            1,
        )
        tx._write("INSERT INTO notes VALUES (2)")  # type: ignore[attr-defined]
        with pytest.raises(psycopg.errors.DivisionByZero):  # the hook's own failure: undone
            tx.run_inline(_statement("INSERT INTO notes VALUES (1 / 0)"), time.monotonic() + 30)
        tx._write("INSERT INTO notes VALUES (3)")  # type: ignore[attr-defined]
    assert await _notes(store) == [1, 2, 3]  # the queued writes were before its savepoint


async def test_a_failed_queued_write_is_the_transactions_error(store: Store) -> None:
    with pytest.raises(StoreError, match="no_such_table"):
        async with store.transaction() as tx:
            tx._write("INSERT INTO notes VALUES (1)")  # type: ignore[attr-defined]
            tx._write("INSERT INTO no_such_table VALUES (1)")  # type: ignore[attr-defined]
            with pytest.raises(psycopg.errors.UndefinedTable):  # as it is, not the hook's
                tx.run_inline(_statement("SELECT 1"), time.monotonic() + 30)
            raise psycopg.errors.UndefinedTable("no_such_table")  # as the engine lets it
    assert await _notes(store) == []


async def test_a_run_that_sends_nothing_leaves_the_queue_to_the_transaction(
    store: Store,
) -> None:
    async with store.transaction() as tx:
        tx._write("INSERT INTO notes VALUES (7)")  # type: ignore[attr-defined]
        assert (
            tx.run_inline(lambda execute: "nothing sent", time.monotonic() + 30) == "nothing sent"
        )
    assert await _notes(store) == [7]


async def test_a_queued_write_past_the_deadline_takes_the_transaction(store: Store) -> None:
    """The cancel reaches a queued statement (sent with the hook's first): nothing to undo
    to, so the mail is retried (`StoreError`), as when the stop hits a hook's write."""
    with pytest.raises(StoreError):
        async with store.transaction() as tx:
            tx._write("INSERT INTO notes SELECT 1 FROM pg_sleep(20)")  # type: ignore[attr-defined]
            with pytest.raises(StoreError, match="stopped inline, the transaction is gone"):
                tx.run_inline(_statement("SELECT 1"), time.monotonic() + 0.3)
            raise StoreError("as the engine lets it")
    assert CANCELLER.armed == 0
    assert await _notes(store) == []


def test_the_canceller_calls_only_what_is_still_armed_at_its_deadline() -> None:
    canceller = Canceller("test-cancel")
    fired, never = threading.Event(), threading.Event()
    far = canceller.arm(time.monotonic() + 3600, never.set)  # the thread sleeps for this
    gone = canceller.arm(time.monotonic() + 0.05, never.set)
    canceller.disarm(gone)
    canceller.arm(time.monotonic() + 0.1, fired.set)  # earlier than the sleep: wakes it
    assert fired.wait(10)
    time.sleep(0.1)  # past the disarmed one's deadline too
    assert not never.is_set()
    assert canceller.armed == 1
    canceller.disarm(far)
    assert canceller.armed == 0
    threads = [t for t in threading.enumerate() if t.name == "test-cancel"]
    assert len(threads) == 1 and threads[0].daemon


async def test_a_write_failing_at_the_commit_rolls_the_transaction_back(store: Store) -> None:
    with pytest.raises(StoreError, match="no_such_table"):
        async with store.transaction() as tx:
            tx._write("INSERT INTO notes VALUES (1)")  # type: ignore[attr-defined]
            tx._write("INSERT INTO no_such_table VALUES (1)")  # type: ignore[attr-defined]
    async with store.transaction() as tx:  # the connection is clean again: a new one
        tx._write("INSERT INTO notes VALUES (2)")  # type: ignore[attr-defined]
    assert await _notes(store) == [2]
    async with store.connection() as conn:  # type: ignore[attr-defined]
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE


async def test_begin_and_commit_ride_with_the_statements(store: Store, tmp_path: Path) -> None:
    async with store.connection() as conn:  # type: ignore[attr-defined]
        trips = RoundTrips(conn, tmp_path / "libpq.trace")
    async with store.transaction():
        pass  # nothing sent: no BEGIN nor COMMIT either (1: the pool's check, an empty query)
    empty = trips.count()
    async with store.transaction() as tx:
        await tx.execute("SELECT 1")  # type: ignore[attr-defined]  # with the BEGIN
        tx._write("INSERT INTO notes VALUES (1)")  # type: ignore[attr-defined]  # the COMMIT
    trips.stop()
    assert (empty, trips.count() - empty) == (1, 3)  # were 3 and 5
    assert await _notes(store) == [1]


async def test_an_awaited_hook_statement_goes_with_the_queue_and_keeps_errors_apart(
    store: Store, tmp_path: Path
) -> None:
    """`awaiting` (how SQL hooks run on PostgreSQL): the queued writes go out with the
    hook's first statement in one round trip; the hook's own error is raised as it is,
    a queued write's as the transaction's (`StoreError`), never as the hook's."""
    async with store.transaction() as tx:
        trips = RoundTrips(tx._conn, tmp_path / "trace")  # type: ignore[attr-defined]
        tx._write("INSERT INTO notes VALUES (1)")  # type: ignore[attr-defined]
        before = trips.count()
        execute = tx.awaiting(time.monotonic() + 30)
        assert execute is not None
        rows = await execute("SELECT count(*) AS n FROM notes WHERE n = :n", {"n": 1})
        assert (trips.count() - before, rows.fetchone()) == (1, (1,))
        trips.stop()
    async with store.transaction() as tx:
        execute = tx.awaiting(time.monotonic() + 30)
        assert execute is not None
        with pytest.raises(psycopg.errors.DivisionByZero):
            await execute("SELECT 1 / 0", {})
    with pytest.raises(StoreError, match="store write failed"):
        async with store.transaction() as tx:
            tx._write("INSERT INTO notes VALUES (1 / 0)")  # type: ignore[attr-defined]
            execute = tx.awaiting(time.monotonic() + 30)
            assert execute is not None
            await execute("SELECT 1", {})
    assert await _notes(store) == [1]


async def test_an_awaited_hook_statement_is_cancelled_at_its_deadline(store: Store) -> None:
    async with store.transaction() as tx:
        execute = tx.awaiting(time.monotonic() + 0.3)
        assert execute is not None
        with pytest.raises(psycopg.errors.QueryCanceled):
            await execute("SELECT pg_sleep(30)", {})
