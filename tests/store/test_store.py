"""The SQLite store itself: its durability settings, schema migrations, file mode, and
the chunk planning that bounds how much mail a batch holds at once."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from engage_listener.errors import StoreError
from engage_listener.sources.imap.batch import CHUNK_BYTES, CHUNK_COUNT, FIRST_CHUNK_COUNT, chunks
from engage_listener.store.sqlite.schema import MIGRATIONS
from engage_listener.store.sqlite.store import SqliteStore
from tests.support.helpers import db_rows


def _pragma(path: Path, name: str) -> object:
    with sqlite3.connect(path) as conn:
        return conn.execute(f"PRAGMA {name}").fetchone()[0]


async def test_new_store_is_wal_private_and_at_the_latest_schema(tmp_path: Path) -> None:
    path = tmp_path / "state" / "store.sqlite3"
    store = SqliteStore(path)
    await store.open()
    try:
        assert store._conn().raw.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    finally:
        await store.close()
    assert _pragma(path, "journal_mode") == "wal"
    assert _pragma(path, "user_version") == len(MIGRATIONS)
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert oct(path.parent.stat().st_mode & 0o777) == "0o700"


async def test_an_older_store_is_migrated_and_keeps_its_data(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite3"
    with sqlite3.connect(path) as old:  # what version 1 of the program left behind
        old.executescript(f"{MIGRATIONS[0]}; PRAGMA user_version=1;")
        old.execute(
            "INSERT INTO customers (id, name, source, created_at) VALUES (7, 'Ana', 'csv', 'x')"
        )
    store = SqliteStore(path)
    await store.open()
    await store.close()
    assert _pragma(path, "user_version") == len(MIGRATIONS)
    assert db_rows(path, "SELECT id, name FROM customers") == [(7, "Ana")]
    assert db_rows(path, "SELECT count(*) FROM outbox") == [(0,)]  # from migration 2


async def test_a_store_from_a_newer_program_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite3"
    with sqlite3.connect(path) as newer:
        newer.execute(f"PRAGMA user_version={len(MIGRATIONS) + 1}")
    store = SqliteStore(path)
    with pytest.raises(StoreError, match="newer than this program knows"):
        await store.open()
    assert _pragma(path, "user_version") == len(MIGRATIONS) + 1
    assert db_rows(path, "SELECT count(*) FROM sqlite_master") == [(0,)]


def test_chunks_are_bounded_by_count_and_bytes() -> None:
    assert (FIRST_CHUNK_COUNT, CHUNK_COUNT) == (10, 100)  # the figures below
    small = dict.fromkeys(range(1, 471), 1000)
    counts = [len(c) for c in chunks(sorted(small), small)]
    assert counts == [10, 20, 40, 80, 100, 100, 100, 20]  # small first: work starts sooner
    big = CHUNK_BYTES // 3 + 1  # three of these do not fit in one fetch
    sizes = {1: big, 2: big, 3: big, 4: 10, 5: CHUNK_BYTES * 3, 6: 10}
    planned = list(chunks(sorted(sizes), sizes))
    assert planned == [[1, 2], [3, 4], [5], [6]]  # an oversized mail is fetched alone
    assert all(sum(sizes[u] for u in c) <= CHUNK_BYTES for c in planned if len(c) > 1)
    assert [u for c in planned for u in c] == sorted(sizes)  # every UID once, in order


async def test_commits_are_checkpointed_in_the_background(tmp_path: Path) -> None:
    """A commit appends to the WAL; the copy into the database file happens on another
    connection soon after, not in the COMMIT (nor only at close)."""
    path = tmp_path / "store.sqlite3"
    store = SqliteStore(path)
    await store.open()
    try:
        async with store.transaction() as tx:
            await tx.execute("CREATE TABLE filler (b BLOB)")
            await tx.execute("INSERT INTO filler VALUES (zeroblob(4000000))")
        wal = path.with_name(path.name + "-wal")
        assert wal.stat().st_size > 4_000_000  # committed, far below the automatic size
        for _ in range(500):
            if path.stat().st_size > 4_000_000:
                break
            await asyncio.sleep(0.01)
        assert path.stat().st_size > 4_000_000
        async with store.transaction() as tx:  # the store goes on writing meanwhile
            await tx.execute("INSERT INTO filler VALUES (x'01')")
    finally:
        await store.close()
    assert not path.with_name(path.name + "-wal").exists()  # the last close merged it
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT count(*), max(length(b)) FROM filler").fetchone() == (
            2,
            4000000,
        )
