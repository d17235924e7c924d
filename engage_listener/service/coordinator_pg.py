"""Several daemons, one PostgreSQL: lease rows decide who runs each listener.

Every `interval` (LeaseSeconds / 6) the coordinator, on a connection of its own, beats its
daemon row, reads the live daemons, renews the leases it holds, gives up the listeners
`spread()` gives to another live daemon (after stopping them here), and takes the free or
expired leases of the listeners `spread()` gives to it (fence + 1).

Decisions:
- Lease rows, not advisory locks. An advisory lock lives as long as its session, so a
  daemon cut off from the database cannot know when the server let it go (the server may
  not notice a dead peer for minutes, then another daemon takes the lock at once), and the
  store's transactions, on other connections, cannot check a lock held by this one. A row
  with `expires_at` set from the server's `now()` is checked by the store's commit itself
  (`owner = me AND expires_at > now()`: fencing), has a fence number that grows on every
  take-over, and can be read by `engage-listener cluster`.
- Timing, with T = LeaseSeconds: a lease is granted for T/2 and renewed every T/6 (three
  chances before it lapses). A dead daemon's leases lapse within T/2 and its heartbeat is
  stale by then; the next daemon's tick (T/6 later) takes them: take-over within ~2T/3.
- No overlap: this daemon drops a listener at `sent + T/2 - T/10` on its own monotonic
  clock, where `sent` is when it sent the renewal; the server's expiry is `now() + T/2`
  with a `now()` later than `sent`, so the daemon stops before anyone can take over. Every
  database call is bounded by that deadline and abandoned (not awaited: psycopg's own
  cancellation can wait 10 s) when it runs out: a frozen connection cannot delay the stop.
- Its own connection (autocommit, psycopg imported here only): heartbeats and renewals
  never queue behind the store's pool, and a lost connection is simply opened again.
- Ownership changes are awaited (`changed`) inside the tick: the supervisor cancels a lost
  listener before the tick goes on, at the cost of delaying the next renewal by as long as
  a cancelled task takes to end (or a reload in progress, up to its 6 s grace). With the
  default 30 s (leases of 15 s) that leaves ample room; LeaseSeconds below ~15 is for tests.
- Every daemon must have the same listeners (the same XML): `spread()` over different
  sets can give a listener to a daemon that does not know it, and nobody takes it
  (`cluster` shows it without an owner).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Collection
from typing import TYPE_CHECKING, Any, TypeVar

from engage_listener.config.model import StoreConfig
from engage_listener.errors import EngageError
from engage_listener.observe.logs import Logger, get_logger, scrub
from engage_listener.service.coordinator import DaemonIdentity, OnChange, spread
from engage_listener.service.leases import LeaseTables
from engage_listener.store.open import libpq_options

if TYPE_CHECKING:
    from psycopg import AsyncConnection

T = TypeVar("T")
RETRY_FRACTION = 0.25  # of the tick: how soon a failed tick is tried again
CLOSE_WAIT = 11.0  # psycopg's cancellation of an abandoned query: 5 s + 5 s


def connect_options(store: StoreConfig) -> tuple[str, dict[str, Any]]:
    """The libpq URL and keyword options of the store's database (the store's own: the
    password beside the URL, never in it, and registered as a secret)."""
    if not store.url:
        raise EngageError("the PostgreSQL coordinator needs <Store><Url>")
    password = store.password.reveal() if store.password is not None else None
    return store.url, libpq_options(password, store.ca_file)


def alive_seconds(lease_seconds: float) -> float:
    """How long a lease is granted, and a heartbeat counts as alive: LeaseSeconds / 2."""
    return lease_seconds / 2


class PostgresCoordinator:
    """One daemon's share of the listeners, kept in `listener_leases`; see the module."""

    def __init__(
        self,
        store: StoreConfig,
        *,
        conninfo: str | None = None,
        lease_seconds: float | None = None,
        log: Logger | None = None,
        **connect: Any,
    ) -> None:
        self.identity = DaemonIdentity.create()
        self.lease = float(lease_seconds or store.lease_seconds)
        self.validity = alive_seconds(self.lease)
        self.interval, self.margin = self.lease / 6, self.lease / 10
        if conninfo is None:
            conninfo, options = connect_options(store)
            connect = {**options, **connect}
        self._conninfo, self._connect_args = conninfo, connect
        self.log = log or get_logger(component="coordinator")
        self._listeners: frozenset[str] = frozenset()
        self._new_listeners = True
        self._held: frozenset[str] = frozenset()
        self.fences: dict[str, int] = {}  # listener -> fence of this daemon's take-over
        self._valid_until = 0.0  # loop time: drop everything held at this moment
        self._conn: AsyncConnection[Any] | None = None
        self._tables: LeaseTables | None = None
        self._abandoned: set[asyncio.Task[Any]] = set()

    @property
    def store_owner(self) -> str | None:
        return self.identity.id

    def owned(self) -> frozenset[str]:
        return self._held

    async def open(self, listeners: Collection[str]) -> None:
        """Connect and register this daemon; it owns nothing until `run` takes leases."""
        self._listeners = frozenset(listeners)
        try:
            await self._connected()
        except Exception as exc:
            self._discard()
            raise EngageError(f"coordinator: cannot reach PostgreSQL: {scrub(str(exc))}") from exc

    def set_listeners(self, listeners: Collection[str]) -> None:
        self._listeners, self._new_listeners = frozenset(listeners), True

    async def run(self, changed: OnChange, stop: asyncio.Event) -> None:
        """Keep the leases until `stop`; a database failure costs listeners only when the
        leases could not be renewed in time."""
        while not stop.is_set():
            try:
                await self._step(changed)
            except Exception as exc:  # psycopg errors, OSError, TimeoutError: retried
                self.log.warning(
                    "coordinator_db_error", error=scrub(str(exc)) or type(exc).__name__
                )
                self._discard()
                await self._expire(changed)
                await self._sleep(stop, RETRY_FRACTION)  # soon: the deadline is running
                continue
            await self._expire(changed)
            await self._sleep(stop)

    async def close(self) -> None:
        """Give every lease up and mark this daemon stopped (listeners already stopped)."""
        self._held = frozenset()
        if self._tables is not None:
            try:
                await self._timed(self._tables.stop(self.identity.id), self.validity)
            except Exception as exc:
                self.log.warning("coordinator_stop_failed", error=scrub(str(exc)))
        conn, self._conn, self._tables = self._conn, None, None
        for task in list(self._abandoned):
            task.cancel()
        if self._abandoned:
            await asyncio.wait(set(self._abandoned), timeout=2.0)
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close()

    # -- run --once ---------------------------------------------------------------------

    async def take_all(self) -> frozenset[str]:
        """Every listener's lease for one pass (`run --once`), or none: a listener another
        live daemon holds is its; those it holds are returned and nothing is kept."""
        me = self.identity.id
        try:
            tables = await self._connected()
            await self._timed(tables.add_listeners(self._listeners))
            await self._timed(tables.heartbeat(me, self.validity))
            sent = asyncio.get_running_loop().time()
            got = await self._timed(tables.acquire(me, self._listeners, self.validity))
        except Exception as exc:
            self._discard()
            raise EngageError(f"coordinator: cannot take the leases: {scrub(str(exc))}") from exc
        if busy := self._listeners - set(got):
            await self._timed(tables.release(me, set(got)))
            return frozenset(busy)
        self._held, self.fences = frozenset(got), dict(got)
        self._valid_until = sent + self.validity - self.margin
        return frozenset()

    async def keep(self, stop: asyncio.Event) -> None:
        """Beat and renew what `take_all` took until `stop`. A lease lost meanwhile is not
        taken back: the store's fencing refuses that listener's next commit (LeaseLost),
        and its mails wait for the next run or for a daemon."""
        while not stop.is_set():
            await self._sleep(stop)
            if stop.is_set() or not self._held:
                return
            try:
                tables, me = await self._connected(), self.identity.id
                await self._timed(tables.heartbeat(me, self.validity))
                sent = asyncio.get_running_loop().time()
                kept = await self._timed(tables.renew(me, self._held, self.validity))
                self._valid_until = sent + self.validity - self.margin
            except Exception as exc:  # retried at the next beat
                self.log.warning("coordinator_db_error", error=scrub(str(exc)) or "error")
                self._discard()
                continue
            if lost := self._held - kept:
                self.log.error("leases_lost", listeners=sorted(lost), reason="taken or expired")
                self._held = frozenset(kept)

    # -- one tick ----------------------------------------------------------------------

    async def _step(self, changed: OnChange) -> None:
        tables, me, loop = await self._connected(), self.identity.id, asyncio.get_running_loop()
        if self._new_listeners:
            await self._timed(tables.add_listeners(self._listeners))
            self._new_listeners = False
        live = await self._timed(tables.heartbeat(me, self.validity))
        if self._held:
            sent = loop.time()
            kept = await self._timed(tables.renew(me, self._held, self.validity))
            self._valid_until = sent + self.validity - self.margin
            if lost := self._held - kept:
                self.log.error("leases_lost", listeners=sorted(lost), reason="taken or expired")
                await self._set(self._held & kept, changed)
        target = spread(self._listeners, {*live, me})
        mine = {lid for lid, daemon in target.items() if daemon == me}
        if surplus := self._held - mine:
            await self._set(self._held - surplus, changed)  # stopped here first, then given up
            await self._timed(tables.release(me, surplus))
            self.log.info("leases_released", listeners=sorted(surplus))
        if wanted := mine - self._held:
            sent = loop.time()
            got = await self._timed(tables.acquire(me, wanted, self.validity))
            if got:
                if not self._held:
                    self._valid_until = sent + self.validity - self.margin
                self.fences.update(got)
                self.log.info("leases_taken", fences=dict(sorted(got.items())))
                await self._set(self._held | set(got), changed)

    async def _set(self, held: Collection[str], changed: OnChange) -> None:
        self._held = frozenset(held)
        await changed(self._held)

    async def _expire(self, changed: OnChange) -> None:
        """Past the deadline without a renewal: stop everything before the leases lapse."""
        if self._held and asyncio.get_running_loop().time() >= self._valid_until:
            self.log.error(
                "leases_lost", listeners=sorted(self._held), reason="not renewed in time"
            )
            await self._set(frozenset(), changed)

    async def _sleep(self, stop: asyncio.Event, fraction: float = 1.0) -> None:
        wait = self.interval * fraction
        if self._held:
            wait = min(wait, max(0.0, self._valid_until - asyncio.get_running_loop().time()))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait):
                await stop.wait()

    # -- the connection ------------------------------------------------------------------

    async def _connected(self) -> LeaseTables:
        if self._tables is not None:
            return self._tables
        import psycopg  # noqa: PLC0415 - only daemons on PostgreSQL load the driver

        self._conn = await self._timed(
            psycopg.AsyncConnection.connect(
                self._conninfo,
                autocommit=True,
                connect_timeout=max(2, int(self.validity)),
                application_name="engage-listener coordinator",
                **self._connect_args,
            )
        )
        tables = LeaseTables(self._conn)
        await self._timed(tables.register(self.identity.id, self.identity.host, self.identity.pid))
        self._new_listeners, self._tables = True, tables
        return tables

    async def _timed(self, work: Awaitable[T], budget: float | None = None) -> T:
        """`work`, given up (TimeoutError) at the deadline of the leases held, if any."""
        if budget is None:
            budget = self.lease
            if self._held:
                budget = self._valid_until - asyncio.get_running_loop().time()
        task = asyncio.ensure_future(work)
        done, _ = await asyncio.wait({task}, timeout=max(0.0, budget))
        if task in done:
            return task.result()
        task.cancel()  # not awaited: psycopg may take 10 s to cancel on a dead connection
        self._keep(task)
        raise TimeoutError("PostgreSQL did not answer in time")

    def _discard(self) -> None:
        """Forget the connection; it is closed once its abandoned work has ended."""
        conn, self._conn, self._tables = self._conn, None, None
        if conn is not None:
            self._keep(asyncio.ensure_future(self._close_later(conn, set(self._abandoned))))

    def _keep(self, task: asyncio.Task[Any]) -> None:
        """Hold a reference until `task` ends; its outcome is of no interest any more."""
        self._abandoned.add(task)

        def done(finished: asyncio.Task[Any]) -> None:
            self._abandoned.discard(finished)
            if not finished.cancelled():
                finished.exception()  # retrieved: no "never retrieved" warning

        task.add_done_callback(done)

    @staticmethod
    async def _close_later(conn: AsyncConnection[Any], pending: set[asyncio.Task[Any]]) -> None:
        if pending:
            await asyncio.wait(pending, timeout=CLOSE_WAIT)
        with contextlib.suppress(Exception):
            await conn.close()
