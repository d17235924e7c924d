"""`engage-listener store copy --from PATH.sqlite3`: an embedded store into PostgreSQL
(issue 16 point 7).

Decisions:

* Ids are kept, so every reference (a message's case, a ledger row's message) holds; the
  identity sequences are then moved past the largest id, so new cases number on.
* One transaction, under an advisory lock: an interrupted copy leaves nothing, and two
  copies at once do not interleave.
* Safe to run again: a row already there under its key is skipped if it is the same row
  (its fingerprint column matches: a message's SHA-256, a case's number, ...), and the
  copy is refused if it is another one (the database holds other data).
* Verified: afterwards every source row's key must be in PostgreSQL, table by table;
  the counts are reported.
* Then every table copied is analyzed: the daemon's first mails are planned from its
  statistics, and autovacuum would look only a minute later (`statistics`).
* The SQLite store is first opened as the daemon would (migrating it to its latest
  schema), then read through a read-only connection. The two stores' version numbers
  are not compared (PostgreSQL has migrations of its own: `schema`): what the copy needs
  is checked table by table. The SQLite store must be at SQLite's latest schema and have
  every table of TABLES; nothing of it may be lost: every column of a copied table must
  exist in PostgreSQL, and a SQLite table the copy does not take (not in TABLES nor
  LEFT_BEHIND) must be empty. So a table a later migration adds is copied once it is in
  TABLES, and until then a store that holds rows of it is refused, naming it, before
  anything is written.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from engage_listener.config.model import StoreConfig
from engage_listener.errors import StoreError
from engage_listener.store.postgres.schema import MIGRATION_LOCK
from engage_listener.store.postgres.statistics import analyze
from engage_listener.store.postgres.store import from_config
from engage_listener.store.sqlite.schema import MIGRATIONS as SQLITE_MIGRATIONS
from engage_listener.store.sqlite.store import SqliteStore

COPY_LOCK = MIGRATION_LOCK + 1


@dataclass(frozen=True)
class Table:
    name: str
    key: tuple[str, ...]
    fingerprint: tuple[str, ...] = ()  # what says a row under the same key is the same row


# In the order references need them.
TABLES = (
    Table("customers", ("id",), ("created_at", "source")),
    Table("customer_addresses", ("address",), ("customer_id",)),
    Table("cases", ("id",), ("case_number", "listener", "sender", "created_at")),
    Table("case_tags", ("case_id", "tag")),
    Table("case_participants", ("case_id", "address")),
    Table("messages", ("id",), ("sha256", "listener", "received_at")),
    Table("attachments", ("id",), ("message_row", "filename", "size")),
    Table("quarantine", ("id",), ("sha256", "listener", "created_at")),
    Table("ledger", ("listener", "mailbox", "item", "epoch"), ("sha256", "created_at")),
    Table("attempts", ("listener", "mailbox", "item", "epoch")),
    Table("outbox", ("id",), ("smtp_message_id", "created_at")),
    Table("webhook_events", ("id",), ("event_id", "created_at")),
    Table("listener_control", ("listener",)),
)
# SQLite tables not copied: the heartbeats of the daemon that wrote them (the running
# daemons write their own).
LEFT_BEHIND = frozenset({"heartbeats"})


@dataclass(frozen=True)
class Copied:
    """One table: rows in the SQLite store, rows copied now, rows already there."""

    table: str
    source: int
    copied: int
    present: int


def _source(path: Path) -> sqlite3.Connection:
    if not path.is_file():
        raise StoreError(f"no SQLite store at {path}")
    db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    version = int(db.execute("PRAGMA user_version").fetchone()[0])
    missing = [t.name for t in TABLES if not _columns(db, t.name)]
    if version < len(SQLITE_MIGRATIONS) or missing:  # just migrated: only if it was changed
        db.close()
        raise StoreError(
            f"the SQLite store {path} has schema {version} (this program's is"
            f" {len(SQLITE_MIGRATIONS)})"
            + (f" without the tables {', '.join(missing)}" if missing else "")
            + ": nothing was copied"
        )
    return db


async def _check_schema(
    conn: psycopg.AsyncConnection[Any], source: sqlite3.Connection, path: Path
) -> None:
    """Refuse a SQLite store holding data this PostgreSQL schema has no place for."""
    names = source.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite%'"
        " ORDER BY name"
    ).fetchall()
    for (name,) in names:
        problem = await _would_lose(conn, source, str(name))
        if problem is not None:
            raise StoreError(
                f"the SQLite store {path} has {problem}, which this PostgreSQL store has no"
                " place for: nothing was copied; upgrade engage-listener"
            )


async def _would_lose(
    conn: psycopg.AsyncConnection[Any], source: sqlite3.Connection, name: str
) -> str | None:
    """What copying would leave out of the SQLite table `name` (None: nothing)."""
    if name in {table.name for table in TABLES}:
        cur = await conn.execute(
            "SELECT column_name FROM information_schema.columns"
            " WHERE table_schema = current_schema() AND table_name = %s",
            (name,),
        )
        missing = set(_columns(source, name)) - {str(r[0]) for r in await cur.fetchall()}
        return f"columns {', '.join(sorted(missing))} of {name}" if missing else None
    if name in LEFT_BEHIND:
        return None
    quoted = '"' + name.replace('"', '""') + '"'
    has_rows = source.execute(f"SELECT 1 FROM {quoted} LIMIT 1").fetchone()  # noqa: S608
    return f"rows in {name}" if has_rows else None


async def copy_sqlite(conn: psycopg.AsyncConnection[Any], path: Path) -> list[Copied]:
    """Copy the SQLite store at `path` into the database of `conn` (migrated), verified."""
    migrating = SqliteStore(path)
    await migrating.open()  # to its latest schema, as the daemon would
    await migrating.close()
    source = _source(path)
    try:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (COPY_LOCK,))
            await _check_schema(conn, source, path)
            done = [await _copy_table(conn, source, table) for table in TABLES]
            for table in TABLES:
                if table.key == ("id",):
                    await conn.execute(
                        f"SELECT setval(pg_get_serial_sequence('{table.name}', 'id'),"  # noqa: S608
                        f" greatest(max(id), 1), max(id) IS NOT NULL) FROM {table.name}"
                    )
            for table, copied in zip(TABLES, done, strict=True):
                await _verify(conn, source, table, copied)
    finally:
        source.close()
    return done


def _columns(source: sqlite3.Connection, table: str) -> list[str]:
    return [str(r[1]) for r in source.execute(f"PRAGMA table_info({table})")]


async def _copy_table(
    conn: psycopg.AsyncConnection[Any], source: sqlite3.Connection, table: Table
) -> Copied:
    columns = _columns(source, table.name)
    names = ", ".join(columns)
    insert = (
        f"INSERT INTO {table.name} ({names}) VALUES ({', '.join(['%s'] * len(columns))})"  # noqa: S608
        " ON CONFLICT DO NOTHING RETURNING 1"
    )
    order = ", ".join(table.key)
    rows = source.execute(f"SELECT {names} FROM {table.name} ORDER BY {order}")  # noqa: S608
    count = copied = 0
    for row in rows:  # one at a time: a store of many GB never sits in memory
        count += 1
        cur = await conn.execute(insert, row)
        if await cur.fetchone() is not None:
            copied += 1
        else:
            await _same_row(conn, table, dict(zip(columns, row, strict=True)))
    return Copied(table.name, count, copied, count - copied)


async def _same_row(conn: psycopg.AsyncConnection[Any], table: Table, row: dict[str, Any]) -> None:
    """A row with this key is there already: refuse unless it is this very row."""
    where = " AND ".join(f"{k} = %s" for k in table.key)
    wanted = table.fingerprint or table.key
    cur = await conn.execute(
        f"SELECT {', '.join(wanted)} FROM {table.name} WHERE {where}",  # noqa: S608
        [row[k] for k in table.key],
    )
    found = await cur.fetchone()
    if found is None or tuple(found) != tuple(row[f] for f in wanted):
        key = ", ".join(f"{k}={row[k]!r}" for k in table.key)
        raise StoreError(
            f"{table.name} ({key}) holds another row in PostgreSQL: the database has data"
            " of its own; copy into a new, empty database"
        )


async def _verify(
    conn: psycopg.AsyncConnection[Any],
    source: sqlite3.Connection,
    table: Table,
    copied: Copied,
) -> None:
    keys = ", ".join(table.key)
    cur = await conn.execute(f"SELECT {keys} FROM {table.name}")  # noqa: S608
    there = {tuple(r) for r in await cur.fetchall()}
    wanted = {tuple(r) for r in source.execute(f"SELECT {keys} FROM {table.name}")}  # noqa: S608
    missing = wanted - there
    if missing or len(wanted) != copied.source:
        raise StoreError(
            f"copy not verified: {table.name} has {copied.source} rows in SQLite,"
            f" {len(wanted & there)} of them in PostgreSQL"
        )


async def copy_into(config: StoreConfig, source: Path) -> list[str]:
    """`store copy --from`: the SQLite store at `source` into the PostgreSQL store `config`
    names (opened, so migrated, first); a line per table with its counts."""
    store = from_config(config)
    await store.open()
    try:
        async with store.connection() as conn:
            done = await copy_sqlite(conn, source)
            with contextlib.suppress(psycopg.Error):  # committed: autovacuum will do it
                await analyze(conn, [table.name for table in TABLES])  # see `statistics`
            return summary(done)
    finally:
        await store.close()


def summary(done: Sequence[Copied]) -> list[str]:
    """One line per table for the operator."""
    return [
        f"{c.table:<20} {c.source:>8} in SQLite, {c.copied:>8} copied, {c.present:>8} already there"
        for c in done
    ]
