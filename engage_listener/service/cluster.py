"""What `engage-listener cluster` and `status` show of the daemons sharing the listeners.

Read from another process than the daemons': on PostgreSQL the lease tables (through
`LeaseTables`' named methods, on a short connection of its own), on SQLite the heartbeats
of the one daemon (solo: this host, the heartbeat's pid, every listener it runs).
"""

from __future__ import annotations

import datetime as dt
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from engage_listener.config.model import Config
from engage_listener.errors import EngageError
from engage_listener.observe.logs import scrub
from engage_listener.observe.status import ListenerOwner, read_status
from engage_listener.service.coordinator import coordinator_kind
from engage_listener.service.leases import LeaseTables
from engage_listener.store.open import open_store


@dataclass(frozen=True)
class ClusterDaemon:
    """One daemon: `alive` while its heartbeat is fresh; `listeners` those it holds."""

    id: str
    host: str
    pid: int
    started_at: str | None  # ISO; None where unknown (solo)
    heartbeat_at: str | None
    stopped_at: str | None
    alive: bool
    listeners: tuple[str, ...]


@dataclass(frozen=True)
class ClusterLease:
    """One listener's lease: its holder (None: free or expired) and fence."""

    listener: str
    daemon: str | None
    host: str | None
    pid: int | None
    fence: int
    expires_at: str | None
    held: bool


@dataclass(frozen=True)
class ClusterView:
    coordinator: str  # "solo" or "postgres"
    lease_seconds: int
    daemons: tuple[ClusterDaemon, ...]
    leases: tuple[ClusterLease, ...]


def _iso(moment: dt.datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(dt.UTC).isoformat(timespec="seconds")


@asynccontextmanager
async def _tables(config: Config) -> AsyncIterator[LeaseTables]:
    import psycopg  # noqa: PLC0415 - only PostgreSQL installations load the driver

    from engage_listener.service.coordinator_pg import connect_options  # noqa: PLC0415

    url, options = connect_options(config.store)
    try:
        conn = await psycopg.AsyncConnection.connect(
            url, autocommit=True, connect_timeout=10, **options
        )
    except psycopg.Error as exc:
        raise EngageError(f"cannot reach PostgreSQL: {scrub(str(exc))}") from exc
    try:
        yield LeaseTables(conn)
    finally:
        await conn.close()


async def read_cluster(config: Config) -> ClusterView:
    """Every daemon and every lease (`engage-listener cluster`)."""
    lease = config.store.lease_seconds
    if coordinator_kind(config.store) == "solo":
        return ClusterView("solo", lease, await _solo_daemons(config), ())
    async with _tables(config) as tables:
        return await cluster_from_tables(tables, lease)


async def cluster_from_tables(tables: LeaseTables, lease: int) -> ClusterView:
    """The PostgreSQL view, from the lease tables' named methods."""
    from engage_listener.service.coordinator_pg import alive_seconds  # noqa: PLC0415

    daemons = await tables.daemons(alive_seconds(lease))
    leases = await tables.leases()
    by_id = {d.id: d for d in daemons}
    held: dict[str, list[str]] = {}
    rows = []
    for row in leases:
        owner = by_id.get(row.owner) if row.held and row.owner else None
        if owner is not None:
            held.setdefault(owner.id, []).append(row.listener)
        rows.append(
            ClusterLease(
                row.listener,
                owner.id if owner else None,
                owner.host if owner else None,
                owner.pid if owner else None,
                row.fence,
                _iso(row.expires_at) if owner else None,
                owner is not None,
            )
        )
    view = [
        ClusterDaemon(
            d.id,
            d.host,
            d.pid,
            _iso(d.started_at),
            _iso(d.heartbeat_at),
            _iso(d.stopped_at),
            d.alive,
            tuple(held.get(d.id, ())),
        )
        for d in daemons
    ]
    return ClusterView("postgres", lease, tuple(view), tuple(rows))


async def _solo_daemons(config: Config) -> tuple[ClusterDaemon, ...]:
    """The one daemon of an embedded store, as its listeners' heartbeats show it."""
    store = await open_store(config.store)
    try:
        rows = await read_status(store, [c.id for c in config.listeners])
        beats = {b.listener: b for b in await store.heartbeats()}
    finally:
        await store.close()
    daemons: dict[int, list[str]] = {}
    last: dict[int, str] = {}
    alive: dict[int, bool] = {}
    for row in rows:
        beat = beats.get(row.listener)
        if beat is None:
            continue
        daemons.setdefault(beat.pid, []).append(row.listener)
        last[beat.pid] = max(last.get(beat.pid, ""), beat.updated_at)
        alive[beat.pid] = alive.get(beat.pid, False) or row.alive
    host = socket.gethostname()
    return tuple(
        ClusterDaemon(f"{host}:{pid}", host, pid, None, last[pid], None, alive[pid], tuple(ids))
        for pid, ids in sorted(daemons.items())
    )


async def listener_owners(config: Config) -> dict[str, ListenerOwner] | None:
    """Who holds each listener now (PostgreSQL); None for solo (`read_status` then names
    this host and the heartbeat's pid)."""
    if coordinator_kind(config.store) == "solo":
        return None
    view = await read_cluster(config)
    return {
        lease.listener: ListenerOwner(lease.host, lease.pid)
        for lease in view.leases
        if lease.held and lease.host is not None and lease.pid is not None
    }
