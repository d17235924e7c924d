"""Protocol logs: old files of the pattern pruned, SMTP in a file of its own (issue 14, 9).

With %time% in ProtocolLogFile every connection, and every acknowledgement's SMTP
session, started a new file that size rotation never removed; and SMTP wrote into
the listener's IMAP file.
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

import pytest

from devkit.dovecot import DovecotSandbox
from engage_listener.config.load import load_config
from engage_listener.observe.protolog import prune
from engage_listener.service.build import protolog_factory
from tests.support.config_xml import ack_xml, config_text, listener_xml
from tests.support.fakes import FakeClock
from tests.support.helpers import Harness, deliver, listener_config, make_mail
from tests.support.servers.smtp_server import SmtpTestServer

DAY = 86400


def touch(path: Path, days_old: float) -> Path:
    path.write_text("old protocol lines\n")
    stamp = time.time() - days_old * DAY
    os.utime(path, (stamp, stamp))
    return path


def test_files_of_the_pattern_older_than_keep_days_are_pruned_at_open(
    dovecot: DovecotSandbox, mailbox_user: str, tmp_path: Path
) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    pattern = str(logs / "IMAP-%listener%-%date%-%time%.log")
    old = [
        touch(logs / "IMAP-Soporte-20240101-101010.log", 10),
        touch(logs / "IMAP-Soporte-20240102-090000.log.2", 8),  # a rotated copy
    ]
    kept = [
        touch(logs / "IMAP-Soporte-20240110-101010.log", 2),  # newer than KeepDays
        touch(logs / "IMAP-Soporte-smtp-20240101-101010.log", 10),  # SMTP's: its own prune
        touch(logs / "IMAP-Ventas-20240101-101010.log", 10),  # another listener's
        touch(logs / "IMAP-Soporte-2024-01-01.log", 10),  # not what the pattern makes
        touch(logs / "notes.txt", 30),
    ]
    cfg = listener_config(
        dovecot, mailbox_user, id="Soporte", protocol_log_file=pattern, protocol_log_keep_days=5
    )
    log = protolog_factory(cfg)()
    assert log is not None
    log.note("opened")
    log.close()
    assert not any(p.exists() for p in old)
    assert all(p.exists() for p in kept)
    assert log.path.exists() and log.path.name.startswith("IMAP-Soporte-2")


def test_placeholders_in_directories_are_pruned_too(tmp_path: Path) -> None:
    (tmp_path / "20240101").mkdir()
    (tmp_path / "20990101").mkdir()
    gone = touch(tmp_path / "20240101" / "A.log", 30)
    young = touch(tmp_path / "20990101" / "A.log", 1)
    other = touch(tmp_path / "20240101" / "B.log", 30)
    removed = prune(str(tmp_path / "%date%" / "%listener%.log"), "A", 14)
    assert removed == [gone] and young.exists() and other.exists()


pytestmark = pytest.mark.smtp("plain", auth=False)


def config_xml(dovecot: DovecotSandbox, user: str, smtp: SmtpTestServer, log: str) -> str:
    block = listener_xml(dovecot, user, "Soporte", ack_xml(smtp.port), ProtocolLogFile=log)
    return config_text(block)


async def test_an_acknowledgements_smtp_session_is_logged_in_its_own_file(
    dovecot: DovecotSandbox, mailbox_user: str, tmp_path: Path, smtp: SmtpTestServer
) -> None:
    path = tmp_path / "el.xml"
    path.write_text(config_xml(dovecot, mailbox_user, smtp, "logs/%listener%.log"))
    (tmp_path / "logs").mkdir()
    config = load_config(path)
    (cfg,) = config.listeners
    dovecot.create_folder(mailbox_user, "IMAP/Done")
    dovecot.append(mailbox_user, "IMAP/New", make_mail(1, sender="ana@example.com"))
    async with Harness(dataclasses.replace(cfg), config.store.path, FakeClock()) as h:
        assert h.listener is not None
        assert (await h.listener.run_once()).ingested == 1
    assert await deliver(config) == 1
    assert len(smtp.messages) == 1
    imap_log = (tmp_path / "logs" / "Soporte.log").read_text()
    smtp_log = (tmp_path / "logs" / "Soporte-smtp.log").read_text()
    assert "LOGIN ***" in imap_log and "MAIL FROM" not in imap_log.upper()
    assert "MAIL FROM" in smtp_log.upper() and "LOGIN ***" not in smtp_log
