"""Running under systemd: the notify protocol over a fake NOTIFY_SOCKET, SIGHUP reloads."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from devkit.dovecot import DovecotSandbox, free_port
from tests.support.config_xml import listener_xml, write_config
from tests.support.helpers import db_rows, make_mail
from tests.support.paths import REPO

NEW, DONE = "IMAP/New", "IMAP/Done"
UNIT = REPO / "systemd" / "engage-listener.service"


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify.sock"))
    sock.settimeout(0.2)
    yield sock
    sock.close()


class Daemon:
    def __init__(self, config: Path, log: Path, env: dict[str, str]) -> None:
        self.log = log
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "engage_listener", "run", "--config", str(config)],
            stdout=log.open("ab"),
            stderr=subprocess.STDOUT,
            env={**os.environ, **env},
        )

    def events(self) -> list[dict[str, object]]:
        lines = self.log.read_text().splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]

    def wait_event(self, name: str, timeout: float = 20, **fields: object) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(
                e["event"] == name and all(e.get(k) == v for k, v in fields.items())
                for e in self.events()
            ):
                return
            time.sleep(0.05)
        raise AssertionError(f"no {name} {fields} in log:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(15)


def received(sock: socket.socket, until: str, timeout: float = 20) -> list[str]:
    """Datagrams until one containing `until` arrives."""
    got: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            got.append(sock.recv(4096).decode())
        except TimeoutError:
            continue
        if until in got[-1]:
            return got
    raise AssertionError(f"never got {until}; got {got}")


def wait_until(check, timeout: float = 20, what: str = "") -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_ready_status_watchdog_reloading_and_stopping(
    dovecot: DovecotSandbox, mailbox_user: str, tmp_path: Path, notify_socket: socket.socket
) -> None:
    dovecot.create_folder(mailbox_user, NEW)
    dovecot.create_folder(mailbox_user, DONE)
    config = write_config(tmp_path / "el.xml", listener_xml(dovecot, mailbox_user))
    env = {"NOTIFY_SOCKET": str(tmp_path / "notify.sock"), "WATCHDOG_USEC": "400000"}
    daemon = Daemon(config, tmp_path / "d.log", env)
    try:
        ready = received(notify_socket, "READY=1")
        assert "STATUS=1 listener(s): Default idle" in ready[-1]
        pings = [m for m in received(notify_socket, "WATCHDOG=1") if "WATCHDOG=1" in m]
        pings += [m for m in received(notify_socket, "WATCHDOG=1") if "WATCHDOG=1" in m]
        assert len(pings) >= 2
        daemon.proc.send_signal(signal.SIGHUP)
        reload = received(notify_socket, "READY=1")
        assert any("RELOADING=1" in m and "MONOTONIC_USEC=" in m for m in reload)
        assert daemon.stop() == 0
        assert any("STOPPING=1" in m for m in received(notify_socket, "STOPPING=1"))
    finally:
        if daemon.proc.poll() is None:
            daemon.proc.kill()


def test_ready_while_one_listener_backs_off_on_a_closed_port(
    dovecot: DovecotSandbox, mailbox_user: str, tmp_path: Path, notify_socket: socket.socket
) -> None:
    """READY=1 does not wait for a server that is down: that listener backs off, says why
    in STATUS=, and the daemon is up (and fed to the watchdog) for the other one."""
    dovecot.create_folder(mailbox_user, NEW)
    dovecot.create_folder(mailbox_user, DONE)
    closed = free_port()
    config = write_config(
        tmp_path / "el.xml",
        listener_xml(dovecot, mailbox_user, "Up"),
        listener_xml(dovecot, mailbox_user, "Down", Port=str(closed)),
    )
    env = {"NOTIFY_SOCKET": str(tmp_path / "notify.sock"), "WATCHDOG_USEC": "400000"}
    daemon = Daemon(config, tmp_path / "d.log", env)
    try:
        messages = received(notify_socket, "READY=1")
        ready = messages[-1]
        assert "STATUS=2 listener(s): Down backing off, 0 batches (cannot connect to " in ready
        assert f":{closed}: " in ready
        assert "Up idle, 1 batches" in ready or "Up processing, 0 batches" in ready
        assert not any("READY=1" in m for m in messages[:-1])
        pings = [m for m in received(notify_socket, "WATCHDOG=1") if "WATCHDOG=1" in m]
        pings += [m for m in received(notify_socket, "WATCHDOG=1") if "WATCHDOG=1" in m]
        assert len(pings) >= 2  # both listener tasks alive: the watchdog is fed
        daemon.wait_event("listener_error", listener="Down", kind="transient")
        assert daemon.stop() == 0
    finally:
        if daemon.proc.poll() is None:
            daemon.proc.kill()


def test_sighup_applies_added_changed_removed_and_rejects_invalid_configs(
    dovecot: DovecotSandbox, mailbox_user: str, tmp_path: Path
) -> None:
    a, b = mailbox_user, mailbox_user + "-b"
    for user in (a, b):
        dovecot.create_folder(user, NEW)
        dovecot.create_folder(user, DONE)
    path = tmp_path / "el.xml"
    only_a = listener_xml(dovecot, a, "A", SyncMaxChangesCount="1")
    with_b = listener_xml(dovecot, b, "B", SyncMaxChangesCount="1")
    write_config(path, only_a)
    daemon = Daemon(path, tmp_path / "d.log", {})
    sent = {a: 0, b: 0}

    def mail(user: str) -> None:
        dovecot.append(user, NEW, make_mail(sent[user], sender=f"{user}-{sent[user]}@x.example"))
        sent[user] += 1

    try:
        daemon.wait_event("batch_end", listener="A")
        mail(a)
        wait_until(lambda: dovecot.count(a, DONE) == 1, what="A works")
        mail(b)  # B is not configured yet: its mail waits
        write_config(path, only_a, with_b)
        daemon.proc.send_signal(signal.SIGHUP)
        daemon.wait_event("reloaded", added=["B"], removed=[], changed=[])
        wait_until(lambda: dovecot.count(b, DONE) == 1, what="added B took its backlog")
        write_config(path, only_a.replace(">1<", ">2<"), with_b)
        daemon.proc.send_signal(signal.SIGHUP)
        daemon.wait_event("reloaded", added=[], removed=[], changed=["A"])
        mail(a)
        mail(a)
        wait_until(lambda: dovecot.count(a, DONE) == 3, what="restarted A")
        path.write_text(path.read_text().replace("<Port>", "<Colour>red</Colour><Port>", 1))
        daemon.proc.send_signal(signal.SIGHUP)
        daemon.wait_event("reload_rejected")
        mail(b)
        wait_until(lambda: dovecot.count(b, DONE) == 2, what="old config still in force")
        write_config(path, only_a.replace(">1<", ">2<"))
        daemon.proc.send_signal(signal.SIGHUP)
        daemon.wait_event("reloaded", added=[], removed=["B"], changed=[])
        daemon.wait_event("listener_stopped", listener="B")
        mail(b)
        time.sleep(1)
        assert dovecot.count(b, NEW) == 1  # B no longer runs
        assert daemon.stop() == 0
    finally:
        if daemon.proc.poll() is None:
            daemon.proc.kill()
    rejected = [e for e in daemon.events() if e["event"] == "reload_rejected"]
    assert any("Colour" in str(e["problem"]) for e in rejected)
    db = tmp_path / "store.sqlite3"
    assert db_rows(db, "SELECT count(*), count(DISTINCT message_id) FROM messages") == [(5, 5)]
    assert db_rows(db, "SELECT count(*) FROM ledger") == [(5,)]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_unit_file_verifies() -> None:
    result = subprocess.run(
        ["systemd-analyze", "verify", str(UNIT)], capture_output=True, text=True, check=False
    )
    problems = [
        line
        for line in result.stderr.splitlines()
        if "engage-listener.service" in line and "Command" not in line
    ]
    assert problems == [], result.stderr


def _unit_settings() -> dict[str, str]:
    settings: dict[str, str] = {}
    for line in UNIT.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and not line.startswith("#"):
            settings[key.strip()] = value.strip()
    return settings


def test_unit_caps_memory_tasks_and_never_dumps_core() -> None:
    """A hostile server or mail cannot take the machine, nor leave secrets in a core file."""
    settings = _unit_settings()
    assert settings["LimitCORE"] == "0"
    assert settings["TasksMax"].isdigit() and int(settings["TasksMax"]) <= 1024
    assert settings["MemoryMax"].endswith(("M", "G"))
