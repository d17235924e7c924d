"""The supervisor with a coordinator: it runs only the listeners this daemon owns, starts
one when it is gained, cancels one at once when it is lost (before the coordinator hears
back), keeps the others when one cannot be built, stops everything when the coordinator
dies, and stops its listeners before the coordinator lets the leases go.

The coordinator is a fake the test drives (the PostgreSQL one has its own tests); the
workers are fakes that run until cancelled or stopped.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Collection
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from engage_listener.config.model import Config, ListenerConfig
from engage_listener.observe.logs import get_logger
from engage_listener.service.coordinator import DaemonIdentity, OnChange, SoloCoordinator
from engage_listener.service.supervisor import Supervisor, Worker
from tests.support.helpers import server_listener_config
from tests.support.supervising import Serving, supervised_config

STUB = server_listener_config("", 0, "u", "p", id="X")


def config_of(tmp_path: Path, *ids: str) -> Config:
    return supervised_config(tmp_path, *(dataclasses.replace(STUB, id=i) for i in ids))


class Notes:
    """systemd, as far as these tests look: the watchdog pings."""

    watchdog_interval = 0.02

    def __init__(self) -> None:
        self.pings = 0

    def ready(self, status: str | None = None) -> None:
        pass

    def status(self, text: str) -> None:
        pass

    def watchdog(self) -> None:
        self.pings += 1

    def reloading(self) -> None:
        pass

    def stopping(self) -> None:
        pass


class Fake:
    """A worker that runs until it is stopped or cancelled, and says which."""

    def __init__(self, lid: str, stop: asyncio.Event, ends: list[tuple[str, str]]) -> None:
        self.lid, self.stop, self.ends = lid, stop, ends
        self.state, self.batches, self.last_error = "idle", 0, None

    async def run(self) -> None:
        try:
            await self.stop.wait()
            self.ends.append((self.lid, "stopped"))
        except asyncio.CancelledError:
            self.ends.append((self.lid, "cancelled"))
            raise


class Workers:
    def __init__(self, broken: Collection[str] = ()) -> None:
        self.broken = set(broken)
        self.built: list[str] = []
        self.ends: list[tuple[str, str]] = []

    def build(self, config: Config, cfg: ListenerConfig, stop: asyncio.Event) -> Worker:
        if cfg.id in self.broken:
            raise ValueError(f"cannot build {cfg.id}")
        self.built.append(cfg.id)
        return Fake(cfg.id, stop, self.ends)


class Driven:
    """A coordinator the test drives: `give(ids)` is what a lease change would report."""

    def __init__(self, owned: Collection[str] = (), fail: bool = False) -> None:
        self.identity = DaemonIdentity("h:1:x", "h", 1)
        self._owned = frozenset(owned)
        self.fail = fail
        self.listeners: frozenset[str] | None = None
        self.changed: OnChange | None = None
        self.running_at_stop: list[str] | None = None
        self.supervisor: Supervisor | None = None
        self.started = asyncio.Event()

    @property
    def store_owner(self) -> str | None:
        return self.identity.id

    def owned(self) -> frozenset[str]:
        return self._owned

    async def open(self, listeners: Collection[str]) -> None:
        self.listeners = frozenset(listeners)

    def set_listeners(self, listeners: Collection[str]) -> None:
        self.listeners = frozenset(listeners)

    async def run(self, changed: OnChange, stop: asyncio.Event) -> None:
        self.changed = changed
        self.started.set()
        if self.fail:
            await asyncio.sleep(0.05)
            raise RuntimeError("lost the plot")
        await stop.wait()
        assert self.supervisor is not None
        self.running_at_stop = list(self.supervisor.running)

    async def give(self, owned: Collection[str]) -> None:
        self._owned = frozenset(owned)
        assert self.changed is not None
        await self.changed(self._owned)

    async def close(self) -> None:
        pass


def served(coordinator: Driven, workers: Workers, config: Config) -> Serving:
    supervisor = Supervisor(workers.build, Notes(), get_logger(), coordinator)
    coordinator.supervisor = supervisor
    return Serving(supervisor, config)


async def test_runs_only_what_it_owns_and_follows_the_coordinator(tmp_path: Path) -> None:
    coordinator, workers = Driven({"A"}), Workers(broken={"C"})
    with capture_logs() as logs:
        async with served(coordinator, workers, config_of(tmp_path, "A", "B", "C", "D")) as s:
            assert set(s.supervisor.running) == {"A"}
            await coordinator.started.wait()
            first = s.supervisor.running["A"]

            await coordinator.give({"A", "B"})
            assert set(s.supervisor.running) == {"A", "B"}
            assert s.supervisor.running["A"] is first  # kept, not restarted

            await coordinator.give({"B"})  # A lost: cancelled before the call returns
            assert first.task.done() and ("A", "cancelled") in workers.ends
            assert set(s.supervisor.running) == {"B"}

            # C cannot be built: logged, and B and D run all the same.
            await coordinator.give({"B", "C", "D"})
            assert set(s.supervisor.running) == {"B", "D"}
            assert not any(r.task.done() for r in s.supervisor.running.values())
    assert workers.built == ["A", "B", "D"]
    failed = [e for e in logs if e["event"] == "listener_build_failed"]
    assert [e["listener"] for e in failed] == ["C"] and "cannot build C" in failed[0]["error"]
    assert any(e["event"] == "listeners_released" and e["listeners"] == ["A"] for e in logs)
    # At shutdown the remaining ones finish the mail in hand (stopped, not cancelled).
    assert sorted(workers.ends) == [("A", "cancelled"), ("B", "stopped"), ("D", "stopped")]


async def test_listeners_stop_before_the_coordinator_lets_go(tmp_path: Path) -> None:
    coordinator, workers = Driven({"A", "B"}), Workers()
    async with served(coordinator, workers, config_of(tmp_path, "A", "B")):
        await coordinator.started.wait()
    assert coordinator.running_at_stop == []
    assert sorted(workers.ends) == [("A", "stopped"), ("B", "stopped")]


async def test_reload_tells_the_coordinator_and_starts_only_owned_ones(tmp_path: Path) -> None:
    coordinator, workers = Driven({"A", "B"}), Workers()
    async with served(coordinator, workers, config_of(tmp_path, "A", "B")) as s:
        await coordinator.started.wait()
        s.config = config_of(tmp_path, "B", "C", "D")  # A removed, C and D added
        await s.supervisor.reload(lambda: s.config)
        assert coordinator.listeners == {"B", "C", "D"}
        assert set(s.supervisor.running) == {"B"}  # C and D: once their leases are taken
        await coordinator.give({"B", "C"})
        assert set(s.supervisor.running) == {"B", "C"}
    assert ("A", "stopped") in workers.ends


async def test_a_dead_coordinator_stops_every_listener_and_the_watchdog(tmp_path: Path) -> None:
    coordinator, workers = Driven({"A", "B"}, fail=True), Workers()
    with capture_logs() as logs:
        async with served(coordinator, workers, config_of(tmp_path, "A", "B")) as s:
            notes = s.supervisor.notify
            assert isinstance(notes, Notes)
            for _ in range(500):
                if not s.supervisor.running and workers.ends:
                    break
                await asyncio.sleep(0.02)
            pings = notes.pings
            await asyncio.sleep(0.2)  # ten ticks: not one ping more
            assert notes.pings == pings
            assert not s.supervisor.running
    assert sorted(workers.ends) == [("A", "cancelled"), ("B", "cancelled")]
    died = [e for e in logs if e["event"] == "coordinator_died"]
    assert len(died) == 1 and "lost the plot" in died[0]["error"]


@pytest.mark.parametrize("ids", [("A",), ("A", "B", "C")])
async def test_solo_owns_every_enabled_listener_as_before(
    tmp_path: Path, ids: tuple[str, ...]
) -> None:
    solo, workers = SoloCoordinator(), Workers()
    config = config_of(tmp_path, *ids)
    await solo.open([c.id for c in config.enabled_listeners()])
    supervisor = Supervisor(workers.build, Notes(), get_logger(), solo)
    async with Serving(supervisor, config) as s:
        assert set(s.supervisor.running) == set(ids)
        s.config = config_of(tmp_path, *ids, "New")
        await s.supervisor.reload(lambda: s.config)
        assert set(s.supervisor.running) == {*ids, "New"}
    assert solo.store_owner is None
    assert sorted(workers.ends) == sorted((i, "stopped") for i in (*ids, "New"))
