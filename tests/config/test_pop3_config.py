"""POP3 as operators configure it: a Pop3Listener block beside an ImapListener."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
from pathlib import Path
from typing import cast

import pytest

from devkit.dovecot import DovecotSandbox
from engage_listener.config.cautions import config_warnings
from engage_listener.config.load import load_config
from tests.support.config_xml import WITH_POP3, listener_xml, pop3_xml, write_config
from tests.support.daemon import cli as daemon_cli
from tests.support.helpers import db_rows, make_mail

POP3_OFF = {"UseImapListener": "True", "UsePop3Listener": "False"}


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return daemon_cli(*args, timeout=90)


def test_imap_and_pop3_listeners_side_by_side_from_one_file(
    dovecot: DovecotSandbox, mailbox_user: str, tmp_path: Path
) -> None:
    imap_user, pop_user = mailbox_user, mailbox_user + "-pop"
    dovecot.create_folder(imap_user, "IMAP/Done")
    dovecot.append_many(imap_user, "IMAP/New", [make_mail(i) for i in range(2)])
    dovecot.append_many(pop_user, "INBOX", [make_mail(10 + i) for i in range(3)])
    config = write_config(
        tmp_path / "el.xml",
        listener_xml(dovecot, imap_user, "Imap"),
        pop3_xml(dovecot, pop_user),
        process=WITH_POP3,
    )
    result = cli("run", "--once", "--config", str(config))
    assert result.returncode == 0, result.stdout + result.stderr
    listeners = {json.loads(line).get("listener") for line in result.stdout.splitlines()}
    assert {"Imap", "Pop"} <= listeners
    assert dovecot.count(pop_user, "INBOX") == 0
    assert dovecot.count(imap_user, "IMAP/Done") == 2
    db = tmp_path / "store.sqlite3"
    assert dict(db_rows(db, "SELECT listener, count(*) FROM cases GROUP BY listener")) == {
        "Imap": 2,
        "Pop": 3,
    }


def fake_server(tmp_path: Path) -> DovecotSandbox:
    """What pop3_xml and listener_xml read of a server, for tests that never connect."""
    (tmp_path / "ca.pem").write_text("x")
    attributes = {
        "host": "pop.example.com",
        "pop3s_port": 995,
        "imap_port": 143,
        "ca_file": tmp_path / "ca.pem",
    }
    return cast(DovecotSandbox, type("S", (), attributes))


def test_pop3_defaults_and_warnings(tmp_path: Path) -> None:
    block = pop3_xml(fake_server(tmp_path), "u", OutputFolder="Done")
    block = block.replace("    <Port>995</Port>\n", "").replace(">True</UseSsl>", ">False</UseSsl>")
    config = load_config(write_config(tmp_path / "el.xml", block, process=WITH_POP3))
    (pop,) = config.pop3_listeners
    assert (pop.protocol, pop.port, pop.leave_on_server) == ("pop3", 110, False)
    assert config.enabled_listeners() == (pop,)
    text = cli("check-config", str(tmp_path / "el.xml")).stdout
    assert "POP3 cannot move mail, OutputFolder is ignored" in text
    assert "Pop: POP3 pop.example.com:110" in text
    off = load_config(write_config(tmp_path / "off.xml", block, process=POP3_OFF))
    assert off.enabled_listeners() == ()
    assert any("POP3 listening is off" in w for w in config_warnings(off))


@pytest.mark.slow
def test_dates_are_refused_for_pop3_listeners_and_warned_of(tmp_path: Path) -> None:
    server = fake_server(tmp_path)
    config = write_config(
        tmp_path / "el.xml",
        listener_xml(server, "u", "Imap", ReadFromDate="2024-01-01", TimeZone="America/Santiago"),
        pop3_xml(server, "u", ReadFromDate="2024-01-01", TimeZone="America/Santiago"),
        process=WITH_POP3,
    )
    check = cli("check-config", str(config))
    assert check.returncode == 0, check.stderr
    assert "warning: listener Pop: POP3 has no received dates, ReadFromDate is ignored" in (
        check.stdout
    )
    assert "warning: listener Pop: POP3 has no received dates, TimeZone is ignored" in (
        check.stdout
    )
    assert check.stdout.count("no received dates") == 2  # the IMAP listener uses both
    refusal = (
        "engage-listener: listener 'Pop' is a POP3 listener: POP3 has no received dates, "
        "so reset/pause/resume apply to IMAP and Graph listeners only\n"
    )
    today = dt.date.today()
    past = (today - dt.timedelta(days=3)).isoformat()
    future = (today + dt.timedelta(days=3)).isoformat()  # a pause
    db = tmp_path / "store.sqlite3"
    attempts = [["reset", "Pop", "--date", day] for day in (past, future)] + [["resume", "Pop"]]
    for args in attempts:
        result = cli(*args, "--config", str(config))
        assert (result.returncode, result.stdout, result.stderr) == (1, "", refusal), args
    assert not db.exists()  # the store was not even opened
    # Still refused once the store exists; only the IMAP listener's pause is in it.
    paused = cli("reset", "Imap", "--date", future, "--config", str(config))
    assert paused.returncode == 0 and "paused until" in paused.stdout
    for args in attempts:
        assert cli(*args, "--config", str(config)).returncode == 1
    assert [r[0] for r in db_rows(db, "SELECT listener FROM listener_control")] == ["Imap"]
