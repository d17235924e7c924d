"""Keeps the listener tasks running, applies reloads, and talks to systemd.

A reload re-reads and validates the XML, then applies it listener by listener:
added ones start, removed ones stop after the mail in hand, changed ones restart,
untouched ones keep running. An invalid file is logged with every problem and the
old configuration stays in force. systemd hears READY=1 once every listener has
connected or entered back-off, a STATUS= line as they work, WATCHDOG=1 only
while every task is alive, and RELOADING=1 / STOPPING=1 around those events.
A listener task that ends while the daemon serves (run() is never meant to return)
is logged once as listener_died, shown as "died" in STATUS=, and stops the watchdog
pings, so systemd restarts the daemon.

With a coordinator (several daemons on one PostgreSQL) only the listeners this daemon
owns run: one starts when its lease is taken and is cancelled at once (no grace: the
store's fencing would refuse its next commit anyway) when the lease is lost or given up.
A coordinator task that ends while the daemon serves stops every listener and the
watchdog pings, like a listener's death.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from engage_listener.config.model import Config, ListenerConfig
from engage_listener.errors import ConfigError, EngageError
from engage_listener.observe.logs import Logger, scrub
from engage_listener.service.coordinator import Coordinator

SETTLING = {"starting", "connecting"}
TICK = 2.0
GRACE = 6.0


class Worker(Protocol):
    """What the supervisor needs of a listener."""

    state: str
    batches: int
    last_error: str | None

    async def run(self) -> None: ...


class Notify(Protocol):
    watchdog_interval: float | None

    def ready(self, status: str | None = None) -> None: ...

    def status(self, text: str) -> None: ...

    def watchdog(self) -> None: ...

    def reloading(self) -> None: ...

    def stopping(self) -> None: ...


@dataclass
class Running:
    config: ListenerConfig
    worker: Worker
    stop: asyncio.Event
    task: asyncio.Task[None]
    died: str | None = None  # why the task ended, once noticed


Build = Callable[[Config, ListenerConfig, asyncio.Event], Worker]


class Supervisor:
    """Owns one task per enabled listener; see the module docstring."""

    def __init__(
        self, build: Build, notify: Notify, log: Logger, coordinator: Coordinator | None = None
    ) -> None:
        self.build = build
        self.notify = notify
        self.log = log
        self.coordinator = coordinator  # None: every enabled listener is this daemon's
        self.running: dict[str, Running] = {}
        self.ready_sent = False
        self.on_reload: Callable[[Config], None] = lambda config: None
        self.heartbeat: Callable[[Mapping[str, Worker]], Awaitable[None]] | None = None
        self.config: Config | None = None
        self._changing = asyncio.Lock()  # ownership changes and reloads, one at a time
        self._stopping = False
        self._coordinating: asyncio.Task[None] | None = None
        self._coordinator_died = False
        self._dropping: asyncio.Task[None] | None = None

    def _mine(self, config: Config) -> list[ListenerConfig]:
        if self._coordinator_died:
            return []
        owned = None if self.coordinator is None else self.coordinator.owned()
        return [c for c in config.enabled_listeners() if owned is None or c.id in owned]

    def start(self, config: Config) -> None:
        self.config = config
        for cfg in self._mine(config):
            self._start(config, cfg)

    def _start(self, config: Config, cfg: ListenerConfig) -> None:
        stop = asyncio.Event()
        try:
            worker = self.build(config, cfg, stop)
        except Exception as exc:  # one listener that cannot be built never stops the others
            self.log.error("listener_build_failed", listener=cfg.id, error=scrub(str(exc)))
            return
        task = asyncio.create_task(worker.run(), name=f"listener:{cfg.id}")
        self.running[cfg.id] = Running(cfg, worker, stop, task)

    async def ownership(self, owned: frozenset[str]) -> None:
        """The coordinator's callback: cancel the listeners no longer owned (before this
        returns), start the newly owned ones."""
        async with self._changing:
            lost = sorted(i for i in self.running if i not in owned)
            if lost:
                self.log.warning("listeners_released", listeners=lost)
                await self._cancel(lost)
            if self.config is None or self._stopping:
                return
            gained = [c for c in self._mine(self.config) if c.id not in self.running]
            for cfg in gained:
                self._start(self.config, cfg)
            if gained:
                self.log.info("listeners_taken", listeners=[c.id for c in gained])

    async def _cancel(self, ids: list[str]) -> None:
        """Stop these listeners now: cancelled, not left to finish the mail in hand."""
        entries = [self.running.pop(i) for i in ids]
        for entry in entries:
            entry.stop.set()
            entry.task.cancel()
        tasks = [e.task for e in entries]
        if tasks:
            await asyncio.wait(tasks, timeout=GRACE)

    async def _stop(self, ids: list[str]) -> None:
        """Stop these listeners after the mail in hand (cancelled after GRACE seconds)."""
        entries = [self.running.pop(i) for i in ids]
        for entry in entries:
            entry.stop.set()
        tasks = [e.task for e in entries]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=GRACE)
            for task in pending:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def serve(
        self, reload: asyncio.Event, stop: asyncio.Event, load: Callable[[], Config]
    ) -> None:
        """Tick (status, watchdog), apply reloads, until `stop` is set."""
        interval = min(TICK, self.notify.watchdog_interval or TICK)
        beating: asyncio.Task[None] | None = None
        coordinator_stop = asyncio.Event()
        if self.coordinator is not None:
            self._coordinating = asyncio.create_task(
                self.coordinator.run(self.ownership, coordinator_stop), name="coordinator"
            )
        while not stop.is_set():
            self._tick()
            if beating is None or beating.done():  # never wait for the store here: the
                beating = asyncio.create_task(self._beat())  # watchdog must keep ticking
            waiters = {asyncio.ensure_future(e.wait()) for e in (reload, stop)}
            await asyncio.wait(waiters, timeout=interval, return_when=asyncio.FIRST_COMPLETED)
            for waiter in waiters:
                waiter.cancel()
            if reload.is_set() and not stop.is_set():
                reload.clear()
                await self.reload(load)
        self.notify.stopping()
        self.log.info("stopping", listeners=len(self.running), grace_seconds=GRACE)
        async with self._changing:
            self._stopping = True
            await self._stop(list(self.running))
        coordinator_stop.set()  # renewing until the listeners stopped: then `close()`
        if self._coordinating is not None:
            _, pending = await asyncio.wait({self._coordinating}, timeout=GRACE)
            for task in pending:
                task.cancel()
            await asyncio.gather(self._coordinating, return_exceptions=True)
        if beating is not None:  # a heartbeat stuck on a busy store is not waited for
            await asyncio.wait({beating}, timeout=1.0)
            beating.cancel()
            await asyncio.gather(beating, return_exceptions=True)

    async def _beat(self) -> None:
        """Heartbeats for `status` from another process; a busy store only skips one."""
        if self.heartbeat is None:
            return
        try:
            await self.heartbeat({lid: r.worker for lid, r in self.running.items()})
        except EngageError as exc:
            self.log.warning("heartbeat_failed", error=str(exc))

    def _tick(self) -> None:
        alive = not self._check_deaths() and not self._check_coordinator()
        if alive:
            self.notify.watchdog()
        status = self.status_line()
        if (
            not self.ready_sent
            and alive
            and all(r.worker.state not in SETTLING for r in self.running.values())
        ):
            self.ready_sent = True
            self.notify.ready(status)
            self.log.info("ready", status=status)
        else:
            self.notify.status(status)

    def _check_deaths(self) -> bool:
        """True when some listener task has ended; each death is logged once."""
        dead = False
        for lid, r in self.running.items():
            if not r.task.done():
                continue
            dead = True
            if r.died is not None:
                continue
            exc = None if r.task.cancelled() else r.task.exception()
            if r.task.cancelled():
                r.died = "cancelled"
            elif exc is None:
                r.died = "run() returned"
            else:
                r.died = scrub(str(exc)) or type(exc).__name__
            self.log.error(
                "listener_died",
                listener=lid,
                error=r.died,
                error_type=type(exc).__name__ if exc is not None else None,
                **({"exc_info": exc} if exc is not None else {}),
            )
        return dead

    def _check_coordinator(self) -> bool:
        """True when the coordinator task has ended: every listener is stopped (their
        leases are no longer renewed), once."""
        task = self._coordinating
        if task is None or not task.done():
            return False
        if not self._coordinator_died:
            self._coordinator_died = True
            exc = None if task.cancelled() else task.exception()
            self.log.error("coordinator_died", error=scrub(str(exc)) if exc else "returned")
            self._dropping = asyncio.create_task(self.ownership(frozenset()))
        return True

    def status_line(self) -> str:
        parts = []
        for lid, r in sorted(self.running.items()):
            if r.died is not None:
                parts.append(f"{lid} died ({r.died[:80]})")
                continue
            part = f"{lid} {r.worker.state}, {r.worker.batches} batches"
            if r.worker.state in {"failing", "backing off"} and r.worker.last_error:
                part += f" ({scrub(r.worker.last_error)[:80]})"  # systemctl status shows it
            parts.append(part)
        return f"{len(parts)} listener(s): " + "; ".join(parts) if parts else "no listeners"

    async def reload(self, load: Callable[[], Config]) -> None:
        self.notify.reloading()
        self.log.info("reloading")
        try:
            config = load()
        except ConfigError as exc:
            for problem in exc.problems:
                self.log.error("reload_rejected", problem=str(problem))
            self.notify.ready(self.status_line())
            return
        except EngageError as exc:
            self.log.error("reload_rejected", problem=str(exc))
            self.notify.ready(self.status_line())
            return
        await self._apply(config)
        self.on_reload(config)
        self.notify.ready(self.status_line())

    async def _apply(self, config: Config) -> None:
        async with self._changing:
            if self.coordinator is not None:
                self.coordinator.set_listeners([c.id for c in config.enabled_listeners()])
            self.config = config
            await self._apply_owned(config)

    async def _apply_owned(self, config: Config) -> None:
        wanted = {c.id: c for c in self._mine(config)}
        removed = [i for i in self.running if i not in wanted]
        changed = [
            i for i, c in wanted.items() if i in self.running and self.running[i].config != c
        ]
        added = [i for i in wanted if i not in self.running]
        await self._stop(removed + changed)
        for lid in changed + added:
            self._start(config, wanted[lid])
        self.log.info(
            "reloaded",
            added=added,
            removed=removed,
            changed=changed,
            unchanged=len(wanted) - len(added) - len(changed),
        )
