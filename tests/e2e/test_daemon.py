"""The daemon as operators run it: a subprocess with an XML file, signals, kill -9, the CLI."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from devkit.dovecot import DovecotSandbox
from tests.support.config_xml import DONE, NEW, listener_xml, wrap, write_config
from tests.support.daemon import cli, events, start_daemon, wait_for
from tests.support.helpers import db_rows, make_mail


@pytest.mark.slow
def test_kill_9_mid_batch_then_restart_loses_nothing_and_duplicates_nothing(
    dovecot: DovecotSandbox, mailbox_user: str, tmp_path: Path
) -> None:
    total = 1500
    mails = [make_mail(i) for i in range(total)]
    dovecot.create_folder(mailbox_user, DONE)
    dovecot.append_many(mailbox_user, NEW, mails)
    config = write_config(tmp_path / "el.xml", listener_xml(dovecot, mailbox_user))
    db = tmp_path / "store.sqlite3"
    daemon = start_daemon(config, tmp_path / "daemon.log")
    try:
        wait_for(lambda: db.exists() and _cases(db) >= 100, what="first cases committed")
    finally:
        daemon.send_signal(signal.SIGKILL)
        daemon.wait(10)
    at_kill = _cases(db)
    assert at_kill < total, "the batch finished before the kill; make it bigger"
    result = cli("run", "--once", "--config", str(config), timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert dovecot.count(mailbox_user, NEW) == 0
    done = dovecot.messages(mailbox_user, DONE)
    assert sorted(_message_id(m) for m in done) == sorted(_message_id(m) for m in mails)
    assert db_rows(db, "SELECT count(*), count(DISTINCT message_id) FROM messages") == [
        (total, total)
    ]
    assert db_rows(db, "SELECT count(*) FROM ledger") == [(total,)]
    assert _cases(db) == total


def test_sigterm_stops_within_10_seconds_with_exit_0(
    dovecot: DovecotSandbox, mailbox_user: str, tmp_path: Path
) -> None:
    dovecot.create_folder(mailbox_user, DONE)
    dovecot.append_many(mailbox_user, NEW, [make_mail(i) for i in range(3)])
    config = write_config(tmp_path / "el.xml", listener_xml(dovecot, mailbox_user))
    log = tmp_path / "daemon.log"
    daemon = start_daemon(config, log)
    try:
        wait_for(lambda: any(e["event"] == "batch_end" for e in events(log)), what="batch")
        started = time.monotonic()
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(10) == 0
        assert time.monotonic() - started < 10
    finally:
        if daemon.poll() is None:
            daemon.kill()
    names = [e["event"] for e in events(log)]
    assert "stopping" in names and "listener_stopped" in names and names[-1] == "stopped"
    assert dovecot.count(mailbox_user, DONE) == 3


def test_json_logs_carry_the_listener_and_never_the_password(
    dovecot: DovecotSandbox, mailbox_user: str, tmp_path: Path
) -> None:
    dovecot.create_folder(mailbox_user, DONE)
    dovecot.append(mailbox_user, NEW, make_mail(1))
    config = write_config(
        tmp_path / "el.xml",
        listener_xml(dovecot, mailbox_user, "Good"),
        listener_xml(dovecot, mailbox_user + "-x", "Bad").replace(
            DovecotSandbox.PASSWORD, "Wrong-Secret-123"
        ),
    )
    result = cli("run", "--once", "--config", str(config))
    assert result.returncode == 1  # one listener failed
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    by_event = {(e["event"], e.get("listener")) for e in lines}
    assert {
        ("connected", "Good"),
        ("batch_start", "Good"),
        ("message", "Good"),
        ("batch_end", "Good"),
        ("listener_error", "Bad"),
    } <= by_event
    batch = next(e for e in lines if e["event"] == "batch_start")
    assert batch["reason"] == "once"
    assert "Wrong-Secret-123" not in result.stdout + result.stderr
    assert DovecotSandbox.PASSWORD not in result.stdout + result.stderr
    assert dovecot.count(mailbox_user, DONE) == 1


def test_cases_command_lists_cases(
    dovecot: DovecotSandbox, mailbox_user: str, tmp_path: Path
) -> None:
    dovecot.create_folder(mailbox_user, DONE)
    dovecot.append_many(
        mailbox_user,
        NEW,
        [make_mail(1, subject="Factura duplicada"), make_mail(2, sender="otro@example.net")],
    )
    config = write_config(tmp_path / "el.xml", listener_xml(dovecot, mailbox_user))
    assert cli("run", "--once", "--config", str(config)).returncode == 0
    listed = json.loads(cli("cases", "--config", str(config), "--json").stdout)
    assert [
        (c["sender"], c["subject"], c["messages"], c["attachments"], c["status"]) for c in listed
    ] == [
        ("cliente@example.com", "Factura duplicada", 1, 1, "open"),
        ("otro@example.net", "Consulta 2", 1, 1, "open"),
    ]
    text = cli("cases", "--config", str(config)).stdout
    assert "Factura duplicada" in text and "2 case(s)" in text


def test_check_config_reports_every_problem_with_line_and_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.xml"
    bad.write_bytes(
        wrap(
            '  <ImapListener ID="A">\n'
            "    <HostName>h</HostName><UserName>u</UserName><Password>p</Password>\n"
            "    <SyncMaxWaitTime>30</SyncMaxWaitTime>\n"
            "    <Colour>blue</Colour>\n"
            "  </ImapListener>\n"
        )
    )
    result = cli("check-config", str(bad))
    assert result.returncode == 2
    assert re.search(rf"{re.escape(str(bad))}:4: SyncMaxWaitTime: ", result.stderr)
    assert re.search(rf"{re.escape(str(bad))}:5: Colour: ", result.stderr)
    assert "Traceback" not in result.stderr


def test_check_config_summarises_a_valid_file(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("x")
    server = SimpleNamespace(host="imap.example.com", imap_port=143, ca_file=tmp_path / "ca.pem")
    config = write_config(tmp_path / "ok.xml", listener_xml(server, "soporte"))  # type: ignore[arg-type]
    result = cli("check-config", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert "Default:" in result.stdout and "IMAP/New" in result.stdout
    assert DovecotSandbox.PASSWORD not in result.stdout


def test_missing_config_file_is_a_config_error(tmp_path: Path) -> None:
    result = cli("run", "--config", str(tmp_path / "nope.xml"))
    assert result.returncode == 2
    assert "nope.xml" in result.stderr and "Traceback" not in result.stderr


def test_config_path_defaults_to_the_environment_variable(tmp_path: Path) -> None:
    env = {**os.environ, "ENGAGE_LISTENER_CONFIG": str(tmp_path / "from-env.xml")}
    result = subprocess.run(
        [sys.executable, "-m", "engage_listener", "check-config"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert result.returncode == 2 and "from-env.xml" in result.stderr


def _cases(db: Path) -> int:
    try:
        return int(db_rows(db, "SELECT count(*) FROM cases")[0][0])
    except Exception:  # table not created yet
        return 0


def _message_id(raw: bytes) -> str:
    match = re.search(rb"^Message-ID: (\S+)", raw, re.M)
    assert match
    return match.group(1).decode()


@pytest.fixture(autouse=True)
def _no_inherited_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ENGAGE_LISTENER_CONFIG", raising=False)
