"""The notify protocol against real datagram sockets, the way systemd listens."""

from __future__ import annotations

import os
import socket
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from engage_listener.service.sdnotify import Notifier


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A bound datagram socket and its NOTIFY_SOCKET value (short path: sun_path is 108 bytes)."""
    with tempfile.TemporaryDirectory(dir=tmp_path if len(str(tmp_path)) < 90 else "/tmp") as d:
        path = os.path.join(d, "notify")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(path)
        sock.settimeout(2)
        try:
            yield sock, path
        finally:
            sock.close()


def received(sock: socket.socket) -> list[str]:
    return sock.recv(4096).decode("utf-8").split("\n")


def test_every_message(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    notifier = Notifier({"NOTIFY_SOCKET": path})
    assert notifier.enabled
    notifier.ready()
    assert received(sock) == ["READY=1"]
    notifier.ready("listening on 2 mailboxes")
    assert received(sock) == ["READY=1", "STATUS=listening on 2 mailboxes"]
    notifier.status("line one\nline two")
    assert received(sock) == ["STATUS=line one line two"]
    notifier.watchdog()
    assert received(sock) == ["WATCHDOG=1"]
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    notifier.reloading()
    fields = received(sock)
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert fields[0] == "RELOADING=1"
    assert fields[1].startswith("MONOTONIC_USEC=")
    assert before <= int(fields[1].removeprefix("MONOTONIC_USEC=")) <= after
    notifier.stopping()
    assert received(sock) == ["STOPPING=1"]
    assert notifier.send("STATUS=ünïcode")
    assert received(sock) == ["STATUS=ünïcode"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="abstract sockets are Linux-only")
def test_abstract_socket() -> None:
    name = f"engage-listener-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(2)
        notifier = Notifier({"NOTIFY_SOCKET": "@" + name})
        notifier.ready("up")
        assert received(sock) == ["READY=1", "STATUS=up"]


@pytest.mark.parametrize(
    ("usec", "pid", "expected"),
    [
        ("20000000", None, 10.0),
        ("3000000", "me", 1.5),
        ("3000000", "other", None),  # the watchdog belongs to another process
        (None, None, None),
        ("0", None, None),
        ("soon", None, None),
    ],
)
def test_watchdog_interval(usec: str | None, pid: str | None, expected: float | None) -> None:
    environ = {"NOTIFY_SOCKET": "/run/systemd/notify"}
    if usec is not None:
        environ["WATCHDOG_USEC"] = usec
    if pid is not None:
        environ["WATCHDOG_PID"] = str(os.getpid() + (pid == "other"))
    assert Notifier(environ).watchdog_interval == expected


def test_disabled_without_notify_socket() -> None:
    for environ in ({}, {"NOTIFY_SOCKET": ""}, {"NOTIFY_SOCKET": "vsock:2:1234"}):
        notifier = Notifier(environ)
        assert not notifier.enabled
        assert notifier.watchdog_interval is None
        assert notifier.send("READY=1") is False
        notifier.ready("x")
        notifier.status("x")
        notifier.watchdog()
        notifier.reloading()
        notifier.stopping()


def test_vanished_socket_is_not_fatal(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    notifier = Notifier({"NOTIFY_SOCKET": path})
    assert notifier.send("READY=1")
    sock.close()
    os.unlink(path)
    assert notifier.send("WATCHDOG=1") is False
    notifier.watchdog()
    notifier.stopping()


def test_closed_listener_is_not_fatal(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    sock.close()  # the file stays, but nobody listens: ECONNREFUSED
    assert Notifier({"NOTIFY_SOCKET": path}).send("READY=1") is False


def test_full_queue_does_not_block(listener: tuple[socket.socket, str]) -> None:
    _, path = listener
    notifier = Notifier({"NOTIFY_SOCKET": path})
    started = time.monotonic()
    results = [notifier.send("STATUS=" + "x" * 1000) for _ in range(5000)]
    assert results[0] is True
    assert results[-1] is False  # the queue filled up; we gave up instead of waiting
    assert time.monotonic() - started < 10
