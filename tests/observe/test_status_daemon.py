"""`status` from a second process while the daemon runs, and its metrics over HTTP."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from devkit.dovecot import DovecotSandbox, free_port
from tests.support.config_xml import listener_xml, write_config
from tests.support.helpers import make_mail


def wait_until(check, timeout: float = 30, what: str = "") -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def status(config: Path) -> str:
    return subprocess.run(
        [sys.executable, "-m", "engage_listener", "status", "--config", str(config)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def test_status_and_metrics_while_the_daemon_runs(
    dovecot: DovecotSandbox, mailbox_user: str, tmp_path: Path
) -> None:
    dovecot.create_folder(mailbox_user, "IMAP/Done")
    dovecot.append_many(mailbox_user, "IMAP/New", [make_mail(i) for i in range(3)])
    port = free_port()
    config = write_config(
        tmp_path / "el.xml",
        listener_xml(dovecot, mailbox_user),
        metrics=f'Listen="127.0.0.1:{port}" HealthMaxAge="600"',
    )
    daemon = subprocess.Popen(
        [sys.executable, "-m", "engage_listener", "run", "--config", str(config)],
        stdout=(tmp_path / "d.log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    try:
        wait_until(lambda: dovecot.count(mailbox_user, "IMAP/Done") == 3, what="batch")
        wait_until(lambda: "idle" in status(config), what="heartbeat")
        text = status(config)
        assert "Default" in text and "idle" in text
        assert " 3 " in text  # mails processed today
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
        samples = {
            (s.name, s.labels.get("listener")): s.value
            for family in text_string_to_metric_families(body.decode())
            for s in family.samples
        }
        assert samples[("engage_listener_processed_today", "Default")] == 3
        assert samples[("engage_listener_up", "Default")] == 1
        assert samples[("engage_listener_quarantined", "Default")] == 0
        health = urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5)
        assert health.status == 200
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(15) == 0
        assert (
            "not running" in status(config)
            or "down" in status(config)
            or "stopped" in status(config)
        )
    finally:
        if daemon.poll() is None:
            daemon.kill()
