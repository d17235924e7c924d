"""The metrics endpoint cannot be used to exhaust the daemon (issue 14, point 9).

300 idle loopback connections used to hold 300 of the daemon's file descriptors
for as long as the clients liked; now at most 32 are open, idle ones are evicted
for new requests, and a request head must arrive within the read deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from devkit.dovecot import free_port
from engage_listener.config.cautions import config_warnings
from engage_listener.config.load import load_config
from engage_listener.observe.metrics import MAX_CONNECTIONS, MetricsServer
from engage_listener.observe.status import ListenerStatus
from tests.support.config_xml import block, write_config

IDLE = 300


def config_xml(path: Path, metrics_listen: str) -> Path:
    """One listener whose server is not there (it backs off), and a metrics endpoint."""
    listener = {
        "HostName": "127.0.0.1",
        "Port": str(free_port()),
        "UseSsl": "True",
        "UserName": "u",
        "Password": "p-1234",
        "InputFolder": "INBOX",
        "OutputFolder": "Done",
    }
    nowhere = block("ImapListener", "Nowhere", listener)
    return write_config(path, nowhere, metrics=f'Listen="{metrics_listen}"')


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def scrape(port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return int(response.status)


def wait_for_endpoint(port: int, daemon: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while True:
        assert daemon.poll() is None, "the daemon ended"
        with contextlib.suppress(OSError):
            if scrape(port) == 200:
                return
        assert time.monotonic() < deadline, "the metrics endpoint never answered"
        time.sleep(0.2)


def test_300_idle_connections_neither_exhaust_descriptors_nor_block_scrapes(
    tmp_path: Path,
) -> None:
    port = free_port()
    config = config_xml(tmp_path / "el.xml", f"127.0.0.1:{port}")
    daemon = subprocess.Popen(
        [sys.executable, "-m", "engage_listener", "run", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    idle: list[socket.socket] = []
    try:
        wait_for_endpoint(port, daemon)
        baseline = fds(daemon.pid)
        for _ in range(IDLE):
            idle.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        time.sleep(1.0)  # the daemon accepts them all meanwhile
        held = fds(daemon.pid) - baseline
        assert scrape(port) == 200  # while all 300 are still open on our side
        assert held <= MAX_CONNECTIONS + 8, f"{held} descriptors held by idle clients"
        assert daemon.poll() is None
    finally:
        for sock in idle:
            sock.close()
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(20)
        except subprocess.TimeoutExpired:
            daemon.kill()


async def test_idle_client_is_closed_at_the_read_deadline_and_busy_slots_refuse_newcomers() -> None:
    release = asyncio.Event()

    async def slow_collect() -> list[ListenerStatus]:
        await release.wait()
        return []

    server = MetricsServer(
        "127.0.0.1", 0, slow_collect, health_max_age=60, max_connections=2, read_timeout=0.3
    )
    await server.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        assert await asyncio.wait_for(reader.read(), 3) == b""  # closed by the server
        writer.close()
        busy = []
        for _ in range(2):  # both slots answering (the collection waits)
            r, w = await asyncio.open_connection("127.0.0.1", server.port)
            w.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            busy.append((r, w))
        await asyncio.sleep(0.1)
        r, w = await asyncio.open_connection("127.0.0.1", server.port)
        assert await asyncio.wait_for(r.read(), 1) == b""  # refused at once, not queued
        w.close()
        release.set()
        for r, w in busy:
            assert (await asyncio.wait_for(r.read(), 3)).startswith(b"HTTP/1.1 200")
            w.close()
    finally:
        await server.stop()


def test_check_config_warns_about_a_metrics_endpoint_reachable_from_the_network(
    tmp_path: Path,
) -> None:
    warning = "metrics endpoint on 0.0.0.0:9464 is reachable from the network; it has no auth"
    exposed = load_config(config_xml(tmp_path / "a.xml", "0.0.0.0:9464"))
    assert any(w.startswith(warning) for w in config_warnings(exposed))
    for listen in ("127.0.0.1:9464", "[::1]:9464", "localhost:9464"):
        quiet = load_config(config_xml(tmp_path / "b.xml", listen))
        assert not [w for w in config_warnings(quiet) if "metrics" in w], listen
    shown = subprocess.run(
        [sys.executable, "-m", "engage_listener", "check-config", str(tmp_path / "a.xml")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert f"warning: {warning}" in shown.stdout, shown.stdout + shown.stderr
