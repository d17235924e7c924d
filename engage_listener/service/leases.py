"""The lease tables in PostgreSQL, behind named methods: the only SQL of the coordination.

`daemons` has one row per daemon process (its heartbeat); `listener_leases` one row per
listener: who holds it, until when, and its fence (incremented on every take-over). The
coordinator (`coordinator_pg`) and `engage-listener cluster` use these methods; the store's
fencing check reads the same rows inside each mail's transaction.

Decisions:
- Every time is the server's `now()`, never a daemon's clock: expiry is decided in one
  place, so clocks that disagree between machines cannot make two owners.
- Only an expired (or released) lease is taken, and taking it increments `fence`: a lease
  is never stolen from a live holder, so a daemon gives up surplus listeners itself
  (`release`), after it has stopped them.
- A mail's transaction holds its listener's lease row FOR KEY SHARE until it commits (the
  store's fencing, `engage_hold_lease`), and (listener, owner, fence) is a unique key
  (LEASE_DDL, the store's migration 11): a take-over or a release changes that key, so
  it waits for every mail that checked the row, and the ownership cannot change between a
  mail's check and its commit; a renewal changes expires_at only and never waits for its
  own daemon's mails. (With FOR SHARE it waited for the group commit in flight; on 2
  loaded cores the renewal ran out of time about once a bench run, and the daemon
  stopped and retook its listeners.)
- A renewal or a take-over updates one lease row a statement (each commits at once): one
  UPDATE of several rows held the rows it had updated while it waited for the next one
  (a take-over still waits for mails), and a mail transaction waiting for one of those
  while another it waited on held the next row made a deadlock, which PostgreSQL broke
  by failing the statement. One row a statement waits for at most that row's mail,
  holding nothing else.
- The table definitions (LEASE_DDL) belong to the PostgreSQL store's migration; the copy
  here is what the tests create, and must stay identical to the migration's.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from psycopg import AsyncConnection

# Owned by the PostgreSQL store's migration (engage_listener/store/postgres/): the
# integrator keeps this copy identical to it (the tests create the tables from it).
LEASE_DDL = (
    "CREATE TABLE daemons (id text PRIMARY KEY, host text NOT NULL, pid integer NOT NULL,"
    " started_at timestamptz NOT NULL, heartbeat_at timestamptz NOT NULL,"
    " stopped_at timestamptz)",
    "CREATE TABLE listener_leases (listener text PRIMARY KEY,"
    " owner text REFERENCES daemons(id) ON DELETE SET NULL,"
    " fence bigint NOT NULL DEFAULT 0, expires_at timestamptz NOT NULL DEFAULT 'epoch')",
    "CREATE UNIQUE INDEX listener_leases_holder ON listener_leases (listener, owner, fence)",
)
FORGET_DAYS = 7  # `cluster` shows a week of daemons, restarts included


@dataclass(frozen=True)
class DaemonRow:
    """One daemon as `cluster` shows it; `alive`: heartbeat younger than the lease."""

    id: str
    host: str
    pid: int
    started_at: dt.datetime
    heartbeat_at: dt.datetime
    stopped_at: dt.datetime | None
    alive: bool


@dataclass(frozen=True)
class LeaseRow:
    """One listener's lease; `held`: an owner whose lease has not expired."""

    listener: str
    owner: str | None
    fence: int
    expires_at: dt.datetime
    held: bool


class LeaseTables:
    """Named statements over one autocommit connection (each statement commits at once)."""

    def __init__(self, conn: AsyncConnection[Any]) -> None:
        self.conn = conn

    async def _rows(self, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        cursor = await self.conn.execute(sql, params)
        return list(await cursor.fetchall()) if cursor.description else []

    async def register(self, daemon_id: str, host: str, pid: int) -> None:
        """This daemon's row, started and beating now (again, after a reconnection); rows
        of daemons silent for FORGET_DAYS go (their leases, long expired, lose the owner)."""
        await self._rows(
            "DELETE FROM daemons WHERE heartbeat_at < now() - make_interval(days => %s)",
            (FORGET_DAYS,),
        )
        await self._rows(
            "INSERT INTO daemons (id, host, pid, started_at, heartbeat_at)"
            " VALUES (%s, %s, %s, now(), now())"
            " ON CONFLICT (id) DO UPDATE SET heartbeat_at = now(), stopped_at = NULL",
            (daemon_id, host, pid),
        )

    async def add_listeners(self, listeners: Collection[str]) -> None:
        """A lease row for every listener (unowned, expired) that has none yet."""
        await self._rows(
            "INSERT INTO listener_leases (listener) SELECT unnest(%s::text[])"
            " ON CONFLICT (listener) DO NOTHING",
            (sorted(listeners),),
        )

    async def heartbeat(self, daemon_id: str, alive_seconds: float) -> list[str]:
        """Beat, and return the ids of the live daemons (this one included)."""
        await self._rows(
            "UPDATE daemons SET heartbeat_at = now(), stopped_at = NULL WHERE id = %s",
            (daemon_id,),
        )
        rows = await self._rows(
            "SELECT id FROM daemons WHERE stopped_at IS NULL"
            " AND heartbeat_at > now() - make_interval(secs => %s)",
            (alive_seconds,),
        )
        return [str(r[0]) for r in rows]

    async def renew(self, daemon_id: str, listeners: Collection[str], seconds: float) -> set[str]:
        """Extend the leases this daemon still holds; returns those renewed. One row a
        statement: see Decisions."""
        renewed: set[str] = set()
        for listener in sorted(listeners):
            rows = await self._rows(
                "UPDATE listener_leases SET expires_at = now() + make_interval(secs => %s)"
                " WHERE owner = %s AND expires_at > now() AND listener = %s RETURNING listener",
                (seconds, daemon_id, listener),
            )
            renewed.update(str(r[0]) for r in rows)
        return renewed

    async def acquire(
        self, daemon_id: str, listeners: Collection[str], seconds: float
    ) -> dict[str, int]:
        """Take those of `listeners` whose lease is free or expired; listener -> new fence.
        One row a statement: see Decisions."""
        taken: dict[str, int] = {}
        for listener in sorted(listeners):
            rows = await self._rows(
                "UPDATE listener_leases SET owner = %s, fence = fence + 1,"
                " expires_at = now() + make_interval(secs => %s)"
                " WHERE listener = %s AND expires_at <= now() RETURNING listener, fence",
                (daemon_id, seconds, listener),
            )
            taken.update((str(r[0]), int(r[1])) for r in rows)
        return taken

    async def release(self, daemon_id: str, listeners: Collection[str]) -> None:
        """Give these up now (already stopped here), so their new owner need not wait."""
        await self._rows(
            "UPDATE listener_leases SET owner = NULL, expires_at = now()"
            " WHERE owner = %s AND listener = ANY(%s)",
            (daemon_id, list(listeners)),
        )

    async def stop(self, daemon_id: str) -> None:
        """Clean shutdown: every lease released, the daemon marked stopped."""
        await self._rows(
            "UPDATE listener_leases SET owner = NULL, expires_at = now() WHERE owner = %s",
            (daemon_id,),
        )
        await self._rows("UPDATE daemons SET stopped_at = now() WHERE id = %s", (daemon_id,))

    async def daemons(self, alive_seconds: float) -> list[DaemonRow]:
        """Every daemon row, oldest first."""
        rows = await self._rows(
            "SELECT id, host, pid, started_at, heartbeat_at, stopped_at,"
            " stopped_at IS NULL AND heartbeat_at > now() - make_interval(secs => %s)"
            " FROM daemons ORDER BY started_at, id",
            (alive_seconds,),
        )
        return [DaemonRow(*r) for r in rows]

    async def leases(self) -> list[LeaseRow]:
        """Every listener's lease, by listener."""
        rows = await self._rows(
            "SELECT listener, owner, fence, expires_at,"
            " owner IS NOT NULL AND expires_at > now() FROM listener_leases ORDER BY listener",
            (),
        )
        return [LeaseRow(*r) for r in rows]
