"""Several coordinators over one real PostgreSQL (issue 16, point 3).

Two or three `PostgresCoordinator`s run in this test's event loop against the lease tables
of a fresh database, with LeaseSeconds 2. A sampler looks at what every coordinator
believes it owns (what its supervisor would run) every few milliseconds: no listener may
ever be owned by two. One coordinator reaches the database through a TCP proxy, so the
test can cut it off (a frozen connection, new ones refused) and watch it report the loss
before the other one takes over, within LeaseSeconds, with a higher fence.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Callable, Collection
from pathlib import Path

import psycopg
import pytest

from devkit.postgres import PostgresServer, free_port
from engage_listener.config.model import StoreConfig
from engage_listener.service.cluster import cluster_from_tables
from engage_listener.service.coordinator import spread
from engage_listener.service.coordinator_pg import PostgresCoordinator
from engage_listener.service.leases import LeaseTables
from tests.support.leases import lease_db
from tests.support.postgres import postgres_server
from tests.support.servers.tcp_proxy import TcpProxy

__all__ = ["lease_db", "postgres_server"]  # fixtures, imported to be used here

LEASE = 3  # LeaseSeconds: a lease lasts 1.5 s, renewed every 0.5 s
LISTENERS = [f"L{i}" for i in range(7)]


class Member:
    """One coordinator running in a task, with every ownership change it reported."""

    def __init__(self, url: str, name: str, lease: int = LEASE) -> None:
        self.name = name
        self.coord = PostgresCoordinator(StoreConfig(Path("-")), conninfo=url, lease_seconds=lease)
        self.changes: list[tuple[float, frozenset[str]]] = []
        self.stop = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def changed(self, owned: frozenset[str]) -> None:
        self.changes.append((time.monotonic(), owned))

    async def start(self, listeners: Collection[str]) -> Member:
        await self.coord.open(listeners)
        self.task = asyncio.create_task(self.coord.run(self.changed, self.stop))
        return self

    def owned(self) -> frozenset[str]:
        return self.coord.owned()

    def gained_at(self, lid: str, after: float = 0.0) -> float | None:
        return next((t for t, o in self.changes if t >= after and lid in o), None)

    def lost_at(self, lid: str, after: float = 0.0) -> float | None:
        return next((t for t, o in self.changes if t >= after and lid not in o), None)

    async def halt(self) -> None:
        """A clean stop: run ends, then every lease is given up."""
        self.stop.set()
        if self.task is not None:
            await asyncio.wait_for(self.task, 10)
        await self.coord.close()

    async def kill(self) -> None:
        """As SIGKILL would: nothing more is sent, nothing released."""
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)


class Sampler:
    """Checks, every few milliseconds, that no listener has two owners."""

    def __init__(self, members: list[Member]) -> None:
        self.members = members
        self.samples = 0
        self.overlaps: list[str] = []
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            seen: dict[str, str] = {}
            for member in self.members:
                for lid in member.owned():
                    if lid in seen:
                        self.overlaps.append(f"{lid}: {seen[lid]} and {member.name}")
                    seen[lid] = member.name
            self.samples += 1
            await asyncio.sleep(0.005)

    async def close(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        assert self.overlaps == []
        assert self.samples > 50


@pytest.fixture
async def members() -> AsyncIterator[list[Member]]:
    """The test's coordinators; whichever still run are halted at the end."""
    started: list[Member] = []
    yield started
    for member in started:
        if member.task is not None and not member.task.done():
            await member.halt()


async def until(check: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("not reached in time")
        await asyncio.sleep(0.02)


def balanced(members: list[Member], listeners: Collection[str]) -> bool:
    low, high = len(listeners) // len(members), math.ceil(len(listeners) / len(members))
    owned = [m.owned() for m in members]
    union = set().union(*owned)
    return union == set(listeners) and all(low <= len(o) <= high for o in owned)


async def db_owners(url: str) -> dict[str, str | None]:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        return {r.listener: r.owner if r.held else None for r in await LeaseTables(conn).leases()}


def test_spread_is_even_deterministic_and_total() -> None:
    daemons = ["d1", "d2", "d3"]
    for count in range(0, 20):
        listeners = [f"L{i}" for i in range(count)]
        result = spread(listeners, daemons)
        assert set(result) == set(listeners)
        loads = [list(result.values()).count(d) for d in daemons]
        assert max(loads) <= math.ceil(count / 3) and min(loads) >= count // 3
        assert spread(listeners[::-1], daemons[::-1]) == result  # order-free
    assert spread(["L1"], []) == {}


async def test_three_daemons_one_owner_each_listener_spread_evenly(
    lease_db: str, members: list[Member]
) -> None:
    a = await Member(lease_db, "a").start(LISTENERS)
    members.append(a)
    sampler = Sampler(members)
    await until(lambda: a.owned() == set(LISTENERS))  # alone: it takes everything
    for name in ("b", "c"):
        members.append(await Member(lease_db, name).start(LISTENERS))
    await until(lambda: balanced(members, LISTENERS))  # a gave up its surplus
    assert sorted(len(m.owned()) for m in members) == [2, 2, 3]
    settled = [m.owned() for m in members]
    await asyncio.sleep(3 * LEASE)  # membership stable: the spread stays as it is
    assert [m.owned() for m in members] == settled
    await sampler.close()
    owners = await db_owners(lease_db)  # the database agrees with every daemon
    for member in members:
        for lid in member.owned():
            assert owners[lid] == member.coord.identity.id


async def test_cut_off_daemon_stops_before_the_other_takes_over(
    postgres_server: PostgresServer, lease_db: str, members: list[Member]
) -> None:
    listeners = LISTENERS[:4]
    with TcpProxy(postgres_server.host, postgres_server.port) as proxy:
        proxied = lease_db.replace(f":{postgres_server.port}/", f":{proxy.port}/")
        a = await Member(proxied, "a").start(listeners)
        b = await Member(lease_db, "b").start(listeners)
        members += [a, b]
        sampler = Sampler(members)
        await until(lambda: balanced(members, listeners))
        mine, fences = a.owned(), dict(a.coord.fences)
        assert len(mine) == 2

        # A partition: a's connection goes silent, and no new one gets through.
        cut = time.monotonic()
        proxy.target = ("127.0.0.1", free_port())
        proxy.freeze_all()
        await until(lambda: b.owned() == set(listeners), timeout=10)
        await sampler.close()
    for lid in mine:
        lost, gained = a.lost_at(lid, cut), b.gained_at(lid, cut)
        assert lost is not None and gained is not None
        assert lost < gained  # a stopped before b could start: no overlap
        assert gained - cut < LEASE  # take-over within LeaseSeconds
        assert b.coord.fences[lid] == fences[lid] + 1  # a take-over is a new fence
    assert a.owned() == frozenset()


async def test_dead_daemon_is_replaced_within_lease_seconds(
    lease_db: str, members: list[Member]
) -> None:
    listeners = LISTENERS[:4]
    a = await Member(lease_db, "a").start(listeners)
    b = await Member(lease_db, "b").start(listeners)
    members += [a, b]
    await until(lambda: balanced(members, listeners))
    mine, fences = a.owned(), dict(a.coord.fences)
    died = time.monotonic()
    await a.kill()
    await until(lambda: b.owned() == set(listeners), timeout=10)
    for lid in mine:
        gained = b.gained_at(lid, died)
        assert gained is not None and gained - died < LEASE
        assert b.coord.fences[lid] == fences[lid] + 1


async def test_brief_reconnection_keeps_the_leases(
    postgres_server: PostgresServer, lease_db: str, members: list[Member]
) -> None:
    """A connection reset with the database still reachable: a reconnects and renews in
    time, so nothing changes hands (a longer lease: reconnecting is a new TCP connection
    and a SCRAM login, on a busy machine)."""
    listeners, lease = LISTENERS[:4], 10
    with TcpProxy(postgres_server.host, postgres_server.port) as proxy:
        proxied = lease_db.replace(f":{postgres_server.port}/", f":{proxy.port}/")
        a = await Member(proxied, "a", lease).start(listeners)
        b = await Member(lease_db, "b", lease).start(listeners)
        members += [a, b]
        await until(lambda: balanced(members, listeners))
        mine, changes = a.owned(), len(a.changes)
        connections = proxy.connections
        proxy.cut_all()
        await until(lambda: proxy.connections > connections)  # a came back
        await asyncio.sleep(lease / 2)  # a whole lease period: renewed on the new connection
        assert a.owned() == mine and len(a.changes) == changes


async def test_clean_stop_hands_over_at_once_and_cluster_shows_it(
    lease_db: str, members: list[Member]
) -> None:
    listeners = LISTENERS[:4]
    a = await Member(lease_db, "a").start(listeners)
    b = await Member(lease_db, "b").start(listeners)
    members += [a, b]
    await until(lambda: balanced(members, listeners))
    async with await psycopg.AsyncConnection.connect(lease_db, autocommit=True) as conn:
        view = await cluster_from_tables(LeaseTables(conn), LEASE)
    assert {d.id for d in view.daemons} == {a.coord.identity.id, b.coord.identity.id}
    for daemon in view.daemons:
        member = a if daemon.id == a.coord.identity.id else b
        assert set(daemon.listeners) == member.owned()
        assert (daemon.host, daemon.pid, daemon.alive) == (
            member.coord.identity.host,
            member.coord.identity.pid,
            True,
        )
        assert daemon.started_at and daemon.heartbeat_at and daemon.stopped_at is None
    assert [lease.listener for lease in view.leases] == sorted(listeners)
    assert all(lease.held and lease.fence >= 1 for lease in view.leases)

    await a.halt()  # released: b need not wait for the leases to lapse
    await until(lambda: b.owned() == set(listeners), timeout=10)
    async with await psycopg.AsyncConnection.connect(lease_db, autocommit=True) as conn:
        view = await cluster_from_tables(LeaseTables(conn), LEASE)
    stopped = next(d for d in view.daemons if d.id == a.coord.identity.id)
    assert stopped.stopped_at is not None and not stopped.alive and stopped.listeners == ()
