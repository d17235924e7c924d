"""The supervisor and systemd: READY=1 once every listener settled, WATCHDOG=1 only while
every listener task is alive, a STATUS= line that follows the listeners' states.

systemd is played by a datagram socket the test reads (the NOTIFY_SOCKET protocol, see
test_sdnotify.py); the listeners are real ones against the sandbox, except where the
supervisor's own rules need a worker whose behaviour the test decides.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from devkit.dovecot import DovecotSandbox, free_port
from engage_listener.config.model import Config, ListenerConfig
from engage_listener.intake.retry import BACKOFF_CAP
from engage_listener.observe.logs import get_logger
from engage_listener.service.build import build_any
from engage_listener.service.sdnotify import Notifier
from engage_listener.service.supervisor import Supervisor, Worker
from engage_listener.store.sqlite.store import SqliteStore
from tests.support.fakes import FakeClock
from tests.support.helpers import listener_config, make_mail, server_listener_config
from tests.support.supervising import Serving, supervised_config

NEW, DONE = "IMAP/New", "IMAP/Done"
TICK = 0.1  # half of WATCHDOG_USEC below: the supervisor ticks this often
Message = list[str]  # the fields of one datagram


@pytest.fixture
def notify_path(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A bound, non-blocking datagram socket and its NOTIFY_SOCKET value (short path)."""
    with tempfile.TemporaryDirectory(dir=tmp_path if len(str(tmp_path)) < 90 else "/tmp") as d:
        path = os.path.join(d, "notify")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(path)
        sock.setblocking(False)
        try:
            yield sock, path
        finally:
            sock.close()


class Systemd:
    """The reading end of NOTIFY_SOCKET; every message received is kept in order."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.messages: list[Message] = []

    async def _next(self, timeout: float) -> Message | None:
        loop = asyncio.get_running_loop()
        try:
            data = await asyncio.wait_for(loop.sock_recv(self.sock, 65536), timeout)
        except TimeoutError:
            return None
        message = data.decode("utf-8").split("\n")
        self.messages.append(message)
        return message

    async def until(self, check: Callable[[Message], bool], timeout: float = 20) -> list[Message]:
        """Messages up to and including the first one that satisfies `check`."""
        got: list[Message] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            message = await self._next(deadline - time.monotonic())
            if message is None:
                break
            got.append(message)
            if check(message):
                return got
        raise AssertionError(f"no such message within {timeout} s; got {got}")

    async def drain(self) -> None:
        """Keep what is still queued (the last messages of a supervisor that stopped)."""
        while await self._next(0.2) is not None:
            pass

    async def during(self, seconds: float) -> list[Message]:
        """Every message received in the next `seconds`."""
        got: list[Message] = []
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            message = await self._next(left)
            if message is not None:
                got.append(message)
        return got


def status_of(message: Message) -> str | None:
    return next((f.removeprefix("STATUS=") for f in message if f.startswith("STATUS=")), None)


def is_ready(message: Message) -> bool:
    return "READY=1" in message


def is_ping(message: Message) -> bool:
    return "WATCHDOG=1" in message


def notifier(path: str) -> Notifier:
    n = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": str(int(TICK * 2 * 1e6))})
    assert n.watchdog_interval == pytest.approx(TICK)
    return n


config_of = supervised_config


class Served(Serving):
    """`Serving`, and on exit the last messages to systemd read."""

    def __init__(self, supervisor: Supervisor, config: Config, systemd: Systemd) -> None:
        super().__init__(supervisor, config)
        self.systemd = systemd

    async def __aexit__(self, *exc: object) -> None:
        await super().__aexit__(*exc)
        await self.systemd.drain()


# ----- with real listeners ------------------------------------------------------------


async def test_ready_once_every_listener_connected_or_backs_off_then_status_follows(
    dovecot: DovecotSandbox,
    mailbox_user: str,
    tmp_path: Path,
    store: SqliteStore,
    notify_path: tuple[socket.socket, str],
) -> None:
    """One listener on the sandbox, one on a closed port: READY=1 comes when the first is
    connected and the second backs off, not before; then STATUS= follows what they do."""
    sock, path = notify_path
    dovecot.create_folder(mailbox_user, NEW)
    dovecot.create_folder(mailbox_user, DONE)
    closed = free_port()
    up = listener_config(dovecot, mailbox_user, id="Up", sync_max_changes_count=1)
    down = listener_config(dovecot, mailbox_user, id="Down", port=closed)
    clock = FakeClock()

    def build(config: Config, cfg: ListenerConfig, stop: asyncio.Event) -> Worker:
        return build_any(cfg, store, clock, stop)

    systemd = Systemd(sock)
    supervisor = Supervisor(build, notifier(path), get_logger())
    async with Served(supervisor, config_of(tmp_path, up, down), systemd):
        before = await systemd.until(is_ready)
        ready = before.pop()
        line = status_of(ready)
        assert line is not None and line.startswith("2 listener(s): Down backing off, 0 batches")
        assert f"(cannot connect to {dovecot.host}:{closed}: " in line
        assert "Up idle, 1 batches" in line or "Up processing, 0 batches" in line
        for message in before:  # earlier ticks: only a STATUS=, some listener not settled
            assert not is_ready(message)
            text = status_of(message)
            if text is not None:
                assert "starting" in text or "connecting" in text, text

        # A new mail: Up takes it (SyncMaxChangesCount 1), and the line says so.
        dovecot.append(mailbox_user, NEW, make_mail(1))
        await systemd.until(lambda m: "Up idle, 2 batches" in (status_of(m) or ""))
        # Up's connection drops: it backs off, with the reason, until the clock moves on.
        await asyncio.to_thread(dovecot.kill_connections, mailbox_user)
        dropped = await systemd.until(lambda m: "Up backing off" in (status_of(m) or ""))
        assert "Up backing off, 2 batches (" in (status_of(dropped[-1]) or "")
        clock.advance(BACKOFF_CAP)
        back = await systemd.until(lambda m: "Up idle, 3 batches" in (status_of(m) or ""))
        assert "Down backing off, 0 batches (cannot connect" in (status_of(back[-1]) or "")
        later = await systemd.during(5 * TICK)
        assert sum(map(is_ping, later)) >= 3  # every task alive: the watchdog is fed
    assert not any(is_ready(m) for m in systemd.messages[len(before) + 1 :])  # READY once
    assert systemd.messages[-1] == ["STOPPING=1"]
    assert dovecot.count(mailbox_user, DONE) == 1


# ----- with workers whose behaviour the test decides ------------------------------------


class Scripted:
    """A worker whose run() ends at once ("return", "raise"), stays "connecting" until the
    test changes its state ("hang"), or goes idle ("live"); the last two until stopped."""

    def __init__(self, behaviour: str, stop: asyncio.Event) -> None:
        self.behaviour, self.stop = behaviour, stop
        self.state = "starting"
        self.batches = 0
        self.last_error: str | None = None

    async def run(self) -> None:
        self.state = "connecting"
        await asyncio.sleep(0)
        if self.behaviour == "return":
            return
        if self.behaviour == "raise":
            raise RuntimeError("a bug escaped the listener loop")
        if self.behaviour == "live":
            self.state = "idle"
        await self.stop.wait()
        self.state = "stopped"


class Scripts:
    """Config and build function for Scripted workers, keeping each one built by ID."""

    def __init__(self, tmp_path: Path, **behaviours: str) -> None:
        self.behaviours = behaviours
        self.config = config_of(
            tmp_path, *(dataclasses.replace(STUB, id=lid) for lid in behaviours)
        )
        self.workers: dict[str, Scripted] = {}

    def build(self, config: Config, cfg: ListenerConfig, stop: asyncio.Event) -> Worker:
        self.workers[cfg.id] = Scripted(self.behaviours[cfg.id], stop)
        return self.workers[cfg.id]


STUB = server_listener_config("", 0, "u", "p", id="X")  # for workers that never connect


async def test_watchdog_is_fed_while_every_listener_lives(
    tmp_path: Path, notify_path: tuple[socket.socket, str]
) -> None:
    sock, path = notify_path
    scripts = Scripts(tmp_path, A="live", B="live")
    systemd = Systemd(sock)
    supervisor = Supervisor(scripts.build, notifier(path), get_logger())
    async with Served(supervisor, scripts.config, systemd):
        await systemd.until(is_ready)
        later = await systemd.during(10 * TICK)
    assert sum(map(is_ping, later)) >= 5
    assert all(
        status_of(m) == "2 listener(s): A idle, 0 batches; B idle, 0 batches"
        for m in later
        if status_of(m) is not None
    )


@pytest.mark.parametrize("behaviour", ["return", "raise"])
async def test_watchdog_stops_once_a_listener_task_died(
    tmp_path: Path, notify_path: tuple[socket.socket, str], behaviour: str
) -> None:
    """A task that ended while the daemon serves: no more WATCHDOG=1, so systemd restarts
    the daemon; the STATUS= line and the log say which listener died and why."""
    sock, path = notify_path
    scripts = Scripts(tmp_path, Alive="live", Doomed=behaviour)
    systemd = Systemd(sock)
    supervisor = Supervisor(scripts.build, notifier(path), get_logger())
    with capture_logs() as logs:
        async with Served(supervisor, scripts.config, systemd):
            first = await systemd.until(lambda m: "Doomed died" in (status_of(m) or ""))
            later = await systemd.during(10 * TICK)
    # The very first tick may come before the task even ran; none after it died.
    assert sum(map(is_ping, first)) <= 1
    assert not any(is_ping(m) for m in later)
    statuses = [status_of(m) for m in later if status_of(m) is not None]
    assert len(statuses) >= 5  # the supervisor still ticks: only the pings stopped
    reason = "a bug escaped the listener loop" if behaviour == "raise" else "run() returned"
    assert statuses[-1] == f"2 listener(s): Alive idle, 0 batches; Doomed died ({reason})"
    died = [e for e in logs if e["event"] == "listener_died"]
    assert len(died) == 1  # said once, not at every tick
    assert died[0]["listener"] == "Doomed" and died[0]["log_level"] == "error"
    assert reason in died[0]["error"]
    assert systemd.messages[-1] == ["STOPPING=1"]


async def test_ready_waits_for_a_listener_still_connecting(
    tmp_path: Path, notify_path: tuple[socket.socket, str]
) -> None:
    sock, path = notify_path
    scripts = Scripts(tmp_path, Fast="live", Slow="hang")
    systemd = Systemd(sock)
    supervisor = Supervisor(scripts.build, notifier(path), get_logger())
    async with Served(supervisor, scripts.config, systemd):
        waiting = await systemd.during(8 * TICK)
        assert len(waiting) >= 4 and not any(map(is_ready, waiting))
        assert (
            status_of(waiting[-1])
            == "2 listener(s): Fast idle, 0 batches; Slow connecting, 0 batches"
        )
        slow = scripts.workers["Slow"]
        slow.state, slow.last_error = "backing off", "cannot connect: timed out"
        ready = (await systemd.until(is_ready))[-1]
    assert status_of(ready) == (
        "2 listener(s): Fast idle, 0 batches; Slow backing off, 0 batches "
        "(cannot connect: timed out)"
    )
