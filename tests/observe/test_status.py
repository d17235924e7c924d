"""`status`: heartbeats written by the daemon, read by a second process on the same store."""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from devkit.dovecot import DovecotSandbox
from engage_listener.observe.status import (
    ListenerStatus,
    read_status,
    render_status,
    write_heartbeats,
)
from engage_listener.store.sqlite.store import SqliteStore
from tests.support.config_xml import WITH_POP3, listener_xml, pop3_xml, write_config
from tests.support.daemon import cli as engage_listener

UTC = dt.UTC


@pytest.fixture
async def stores(tmp_path: Path) -> AsyncIterator[tuple[SqliteStore, SqliteStore]]:
    """The daemon's store and a second one on the same file, as `status` would open it."""
    daemon, cli = SqliteStore(tmp_path / "s.sqlite3"), SqliteStore(tmp_path / "s.sqlite3")
    await daemon.open()
    await cli.open()
    try:
        yield daemon, cli
    finally:
        await cli.close()
        await daemon.close()


def worker(state: str = "idle", **attrs: object) -> SimpleNamespace:
    base: dict[str, object] = {
        "state": state,
        "batches": 0,
        "last_error": None,
        "last_success_at": None,
        "backlog": None,
    }
    return SimpleNamespace(**{**base, **attrs})


async def ledger(store: SqliteStore, listener: str, uid: int, created: str, state: str) -> None:
    async with store.transaction() as tx:
        await tx.execute(
            "INSERT INTO ledger (listener, mailbox, epoch, item, sha256, state, created_at)"
            " VALUES (?, 'INBOX', '1', ?, 'x', ?, ?)",
            (listener, uid, state, created),
        )


async def test_second_store_reads_heartbeats(stores: tuple[SqliteStore, SqliteStore]) -> None:
    daemon, cli = stores
    success = time.time() - 5
    workers = {
        "A": worker(
            "idle",
            batches=3,
            last_success_at=success,
            backlog=2,
            oldest_unprocessed=time.time() - 120,
        ),
        "B": worker("backing off", last_error="connection refused\nby peer"),
    }
    await write_heartbeats(daemon, workers)
    a, b, c = await read_status(cli, ["A", "B", "C"])

    assert a.listener == "A" and a.state == "idle" and a.alive
    assert a.last_success_at == dt.datetime.fromtimestamp(success, UTC).isoformat("T", "seconds")
    assert a.backlog == 2 and a.last_error is None and a.heartbeat_at is not None
    assert a.oldest_unprocessed_age is not None and 115 < a.oldest_unprocessed_age < 130
    assert b.state == "backing off" and b.alive and b.backlog is None
    assert b.last_error == "connection refused\nby peer" and b.last_success_at is None
    assert c == ListenerStatus("C", "stopped", False, None, 0, None, None, 0, 0, None, None, None)

    # The next tick runs only A: B's row goes, A's is updated in place.
    workers["A"].state = "processing"
    await write_heartbeats(daemon, {"A": workers["A"]})
    a, b = await read_status(cli, ["A", "B"])
    assert a.state == "processing" and b.state == "stopped" and b.heartbeat_at is None

    await write_heartbeats(daemon, {})
    assert (await cli.query("SELECT count(*) FROM heartbeats"))[0][0] == 0


async def test_alive_needs_fresh_heartbeat_and_live_pid(
    stores: tuple[SqliteStore, SqliteStore],
) -> None:
    daemon, cli = stores
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    await write_heartbeats(daemon, {"A": worker()})
    async with daemon.transaction() as tx:
        await tx.execute(
            "INSERT INTO heartbeats (listener, state, pid, updated_at) VALUES (?, 'idle', ?, ?)",
            ("Dead", gone.pid, dt.datetime.now(UTC).isoformat(timespec="seconds")),
        )
    now = dt.datetime.now(UTC)
    a, dead = await read_status(cli, ["A", "Dead"], now=now)
    assert a.alive and not dead.alive and dead.state == "idle"
    (late,) = await read_status(cli, ["A"], now=now + dt.timedelta(seconds=60))
    assert not late.alive
    assert "down (last: idle)" in render_status([late])


async def test_processed_today_respects_time_zone_midnight(
    stores: tuple[SqliteStore, SqliteStore],
) -> None:
    daemon, cli = stores
    # 02:30 UTC on 10 March is still 9 March, 23:30, in Buenos Aires (UTC-3).
    now = dt.datetime(2024, 3, 10, 2, 30, tzinfo=UTC)
    await ledger(daemon, "A", 1, "2024-03-09T02:59:59+00:00", "moved")  # 23:59:59 on the 8th
    await ledger(daemon, "A", 2, "2024-03-09T03:00:00+00:00", "moved")  # 00:00 on the 9th
    await ledger(daemon, "A", 3, "2024-03-10T01:00:00+00:00", "committed")
    await ledger(daemon, "A", 4, "2024-03-10T01:10:00+00:00", "quarantined")
    await ledger(daemon, "B", 5, "2024-03-10T01:00:00+00:00", "deleted")

    zone = "America/Argentina/Buenos_Aires"
    a, b = await read_status(cli, ["A", "B"], now=now, tz=zone)
    assert (a.processed_today, b.processed_today) == (2, 1)
    assert (a.processed_total, b.processed_total) == (3, 1)
    a, b = await read_status(cli, ["A", "B"], now=now)  # UTC: the day began at 00:00Z
    assert (a.processed_today, b.processed_today) == (1, 1)
    a, b = await read_status(cli, ["A", "B"], now=now, tz={"A": zone})
    assert (a.processed_today, b.processed_today) == (2, 1)


async def test_quarantine_and_pending_acknowledgements(
    stores: tuple[SqliteStore, SqliteStore],
) -> None:
    daemon, cli = stores
    stamp = "2024-03-10T01:00:00+00:00"
    async with daemon.transaction() as tx:
        for uid, state in enumerate(["held", "held", "replayed"]):
            await tx.execute(
                "INSERT INTO quarantine (listener, mailbox, epoch, item, sha256, reason,"
                " attempts, state, created_at, raw) VALUES ('A', 'INBOX', '1', ?, 'x', 'bad',"
                " 3, ?, ?, x'00')",
                (uid, state, stamp),
            )
        await tx.execute(
            "INSERT INTO cases (id, case_number, listener, sender, subject, created_at,"
            " updated_at) VALUES (1, '000001', 'A', 'c@example.com', 's', ?, ?)",
            (stamp, stamp),
        )
        await tx.execute(
            "INSERT INTO messages (id, case_id, listener, sender, subject, received_at, sha256,"
            " size, parsed, raw) VALUES (1, 1, 'A', 'c@example.com', 's', ?, 'x', 1, 1, x'00')",
            (stamp,),
        )
        for state in ["pending", "sending", "sent", "failed", "uncertain", "pending"]:
            await tx.execute(
                "INSERT INTO outbox (listener, case_id, message_row, recipient, subject,"
                " smtp_message_id, mime, state, created_at) VALUES ('A', 1, 1, 'c@example.com',"
                " 's', '<m@x>', x'00', ?, ?)",
                (state, stamp),
            )
    a, b = await read_status(cli, ["A", "B"])
    assert (a.quarantined, a.pending_acks) == (2, 3)
    assert (b.quarantined, b.pending_acks) == (0, 0)


async def test_pauses(stores: tuple[SqliteStore, SqliteStore]) -> None:
    daemon, cli = stores
    future = (dt.datetime.now(UTC) + dt.timedelta(days=2)).isoformat(timespec="seconds")
    past = (dt.datetime.now(UTC) - dt.timedelta(days=2)).isoformat(timespec="seconds")
    until = dt.datetime(2030, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=-3)))
    async with daemon.transaction() as tx:
        for lid, value in (("Requested", future), ("Expired", past)):
            await tx.execute(
                "INSERT INTO listener_control (listener, paused_until, updated_at)"
                " VALUES (?, ?, ?)",
                (lid, value, past),
            )
    await write_heartbeats(
        daemon,
        {
            "Worker": worker("paused", paused_until=until),
            "Given": worker("idle"),
            "Expired": worker("idle"),
        },
        paused={"Given": "2031-01-01T00:00:00+00:00"},
    )
    rows = await read_status(cli, ["Worker", "Given", "Requested", "Expired"])
    assert [r.paused_until for r in rows] == [
        "2030-01-01T00:00:00-03:00",
        "2031-01-01T00:00:00+00:00",
        future,
        None,
    ]
    text = render_status(rows)
    assert "paused until 2030-01-01T00:00:00-03:00" in text
    assert f"not running, paused until {future}" in text


async def test_render_status(stores: tuple[SqliteStore, SqliteStore]) -> None:
    daemon, cli = stores
    await write_heartbeats(
        daemon,
        {
            "Soporte": worker(
                "idle",
                last_success_at=1_700_000_000.0,
                backlog=12,
                oldest_unprocessed=time.time() - 3 * 3600 - 90,
            ),
            "Ventas": worker("failing", last_error="authentication failed: " + "x" * 3000),
        },
    )
    await ledger(daemon, "Soporte", 1, dt.datetime.now(UTC).isoformat(timespec="seconds"), "moved")
    text = render_status(await read_status(cli, ["Soporte", "Ventas", "Otro"]))
    lines = text.splitlines()
    assert lines[0].split() == [
        "LISTENER",
        "STATE",
        "LAST",
        "SUCCESS",
        "TODAY",
        "BACKLOG",
        "OLDEST",
        "QUAR",
        "ACKS",
    ]
    soporte = next(line for line in lines if line.startswith("Soporte "))
    assert soporte.split() == [
        "Soporte",
        "idle",
        "2023-11-14T22:13:20+00:00",
        "1",
        "12",
        "3h",
        "1m",
        "0",
        "0",
    ]
    ventas = next(line for line in lines if line.startswith("Ventas "))
    assert ventas.split()[1:3] == ["failing", "never"]
    assert "Otro" in text and "not running" in text
    error = next(line for line in lines if line.startswith("Ventas: last error: "))
    assert len(error) < 400
    assert "daemon is not running" not in text
    # Columns line up: every row's TODAY starts where the header's does.
    column = lines[0].index("TODAY")
    assert soporte[column] == "1"

    assert "daemon is not running" in render_status(await read_status(cli, ["Otro"]))


async def test_status_command_prints_json_with_json(
    dovecot: DovecotSandbox, tmp_path: Path
) -> None:
    """`status --json`: one object a configured listener, in the file's order, every field."""
    config = write_config(
        tmp_path / "el.xml",
        listener_xml(dovecot, "u", "Soporte"),
        pop3_xml(dovecot, "p"),
        process=WITH_POP3,
    )
    store = SqliteStore(tmp_path / "store.sqlite3")  # the file's <Store><Path>
    await store.open()
    try:
        success = time.time() - 5
        await write_heartbeats(
            store,
            {
                "Soporte": worker(
                    "idle",
                    last_success_at=success,
                    backlog=4,
                    oldest_unprocessed=time.time() - 300,
                    last_error="connection reset\nby peer",
                )
            },
        )
        await ledger(
            store, "Soporte", 1, dt.datetime.now(UTC).isoformat(timespec="seconds"), "moved"
        )
    finally:
        await store.close()

    done = engage_listener("status", "--json", "--config", str(config))
    assert done.returncode == 0, done.stderr
    soporte, pop = json.loads(done.stdout)
    assert list(soporte) == [
        "listener",
        "kind",
        "state",
        "alive",
        "last_success_at",
        "processed_today",
        "backlog",
        "oldest_unprocessed_age",
        "quarantined",
        "pending_acks",
        "last_error",
        "paused_until",
        "heartbeat_at",
        "processed_total",
        "owner",
    ]
    assert (soporte["listener"], soporte["kind"], soporte["state"]) == ("Soporte", "imap", "idle")
    assert soporte["alive"] is True and soporte["heartbeat_at"]
    assert soporte["last_success_at"] == dt.datetime.fromtimestamp(success, UTC).isoformat(
        timespec="seconds"
    )
    assert (soporte["backlog"], soporte["processed_today"], soporte["processed_total"]) == (4, 1, 1)
    assert 295 < soporte["oldest_unprocessed_age"] < 330
    assert soporte["last_error"] == "connection reset\nby peer"  # in full, not folded
    assert (soporte["quarantined"], soporte["pending_acks"], soporte["paused_until"]) == (
        0,
        0,
        None,
    )
    assert (pop["listener"], pop["kind"], pop["state"], pop["alive"]) == (
        "Pop",
        "pop3",
        "stopped",
        False,
    )
    assert pop["heartbeat_at"] is None and pop["backlog"] is None and pop["last_success_at"] is None
    # One daemon on SQLite owns what it runs: this host and the pid of its heartbeat.
    assert soporte["owner"] == {"host": socket.gethostname(), "pid": os.getpid()}
    assert pop["owner"] is None  # nobody runs it

    text = engage_listener("status", "--config", str(config))
    assert text.returncode == 0 and text.stdout.startswith("LISTENER")
    assert "Soporte: last error: connection reset by peer" in text.stdout
