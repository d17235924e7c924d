"""Protocol log files: masking, bodies only on request, rotation, start-up checks, and a
log that cannot be opened."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from devkit.dovecot import DovecotSandbox
from engage_listener.errors import PermanentError
from engage_listener.observe.protolog import (
    ProtocolLog,
    ProtocolLogError,
    expand_path,
    log_file_problem,
    mask_command,
)
from tests.support.config_xml import listener_xml, write_config
from tests.support.fakes import FakeClock
from tests.support.helpers import Harness, eventually, listener_config


def test_credentials_are_masked_in_every_protocol() -> None:
    assert mask_command('A1 LOGIN "user" "pa ss"') == "A1 LOGIN ***"
    assert mask_command("A2 AUTHENTICATE XOAUTH2 dXNlcj1h") == "A2 AUTHENTICATE XOAUTH2 ***"
    assert mask_command("PASS hunter2") == "PASS ***"
    assert mask_command("AUTH PLAIN AHVzZXIAcGFzcw==") == "AUTH PLAIN ***"
    assert mask_command("A3 UID MOVE 1:4 Done") == "A3 UID MOVE 1:4 Done"


def test_continuation_payload_after_authenticate_is_masked(tmp_path: Path) -> None:
    log = ProtocolLog(tmp_path / "p.log")
    log.sent("A1 AUTHENTICATE PLAIN")
    log.sent("AHVzZXIAc2VjcmV0LXBhc3M=")
    log.sent("A2 NOOP")
    log.close()
    text = (tmp_path / "p.log").read_text()
    assert "AHVzZXIAc2VjcmV0LXBhc3M=" not in text and "C: ***" in text and "A2 NOOP" in text


def test_bodies_only_with_protocol_log_bodies(tmp_path: Path) -> None:
    quiet, loud = ProtocolLog(tmp_path / "q.log"), ProtocolLog(tmp_path / "l.log", bodies=True)
    for log in (quiet, loud):
        log.literal(11)
        log.literal_data(b"Hola\r\nmundo")
        log.close()
    assert "Hola" not in (tmp_path / "q.log").read_text()
    assert "<11 bytes of literal data>" in (tmp_path / "q.log").read_text()
    assert "S| Hola" in (tmp_path / "l.log").read_text()


def test_rotation_keeps_the_configured_number_of_files(tmp_path: Path) -> None:
    path = tmp_path / "imap.log"
    log = ProtocolLog(path, max_bytes=2000, keep=2)
    for n in range(200):
        log.received(f"* {n} EXISTS".encode())
    log.close()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["imap.log", "imap.log.1", "imap.log.2"]
    assert all(p.stat().st_size <= 2100 for p in tmp_path.iterdir())
    assert "199 EXISTS" in path.read_text()
    assert oct(path.stat().st_mode & 0o777) == "0o600"


def test_placeholders_are_expanded() -> None:
    path = expand_path("/var/log/el/IMAP-%listener%-%date%-%time%.log", "Soporte ñ/1")
    assert path.parent == Path("/var/log/el")
    assert path.name.startswith("IMAP-Soporte___1-2") and path.name.endswith(".log")


def test_missing_log_directory_is_a_clear_error_at_startup(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("x")
    server = type("S", (), {"host": "127.0.0.1", "imap_port": 1, "ca_file": tmp_path / "ca.pem"})
    xml = listener_xml(server, "u", ProtocolLogFile=str(tmp_path / "nope" / "x.log"))  # type: ignore[arg-type]
    config = write_config(tmp_path / "el.xml", xml)
    result = subprocess.run(
        [sys.executable, "-m", "engage_listener", "run", "--once", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert (
        f"{config}:3: ProtocolLogFile: directory {tmp_path / 'nope'} does not exist"
        in result.stderr
    )


def run_once(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "engage_listener", "run", "--once", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_log_file_that_cannot_be_written_is_a_clear_error_at_startup(tmp_path: Path) -> None:
    """As root file modes do not stop writes, so the unwritable "file" is a directory."""
    (tmp_path / "ca.pem").write_text("x")
    taken = tmp_path / "imap.log"
    taken.mkdir()
    server = type("S", (), {"host": "127.0.0.1", "imap_port": 1, "ca_file": tmp_path / "ca.pem"})
    xml = listener_xml(server, "u", ProtocolLogFile=str(taken))  # type: ignore[arg-type]
    config = write_config(tmp_path / "el.xml", xml)
    result = run_once(config)
    assert result.returncode == 2, result.stderr
    assert f"{config}:3: ProtocolLogFile: {taken} is a directory, not a file" in result.stderr


def test_log_file_problems(tmp_path: Path) -> None:
    fine = tmp_path / "fine.log"
    assert log_file_problem(fine) is None
    assert not fine.exists()  # the check creates nothing
    fine.write_text("old lines\n")
    assert log_file_problem(fine) is None
    assert fine.read_text() == "old lines\n"  # nor changes anything
    (tmp_path / "dir.log").mkdir()
    assert (
        log_file_problem(tmp_path / "dir.log")
        == f"{tmp_path / 'dir.log'} is a directory, not a file"
    )
    assert (
        log_file_problem(tmp_path / "nope" / "x.log")
        == f"directory {tmp_path / 'nope'} does not exist"
    )
    fifo = tmp_path / "fifo.log"
    os.mkfifo(fifo)  # nobody reads it: refused at once, not a hang
    assert (
        log_file_problem(fifo) == f"{fifo} cannot be opened for writing: No such device or address"
    )


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes whatever the file mode says")
def test_read_only_log_file_and_directory_are_problems(tmp_path: Path) -> None:
    locked = tmp_path / "locked.log"
    locked.write_text("")
    locked.chmod(0o400)
    assert log_file_problem(locked) == f"{locked} cannot be opened for writing: Permission denied"
    sealed = tmp_path / "sealed"
    sealed.mkdir()
    sealed.chmod(0o500)
    try:
        assert log_file_problem(sealed / "x.log") == f"directory {sealed} is not writable"
    finally:
        sealed.chmod(0o700)


def test_opening_an_unwritable_log_is_a_permanent_error_not_an_oserror(tmp_path: Path) -> None:
    (tmp_path / "dir.log").mkdir()
    with pytest.raises(
        ProtocolLogError, match=r"ProtocolLogFile .*dir\.log cannot be opened"
    ) as info:
        ProtocolLog(tmp_path / "dir.log")
    assert isinstance(info.value, PermanentError)


async def test_a_listener_whose_log_cannot_be_opened_fails_plainly(
    dovecot: DovecotSandbox, mailbox_user: str, tmp_path: Path
) -> None:
    """Made unwritable after start-up (or by a reload): the listener reports it as a
    permanent error and waits for the operator; no traceback, no tight retry loop."""
    dovecot.create_folder(mailbox_user, "IMAP/New")
    dovecot.create_folder(mailbox_user, "IMAP/Done")
    taken = tmp_path / "imap.log"
    taken.mkdir()
    cfg = listener_config(dovecot, mailbox_user, protocol_log_file=str(taken))
    with capture_logs() as logs:
        async with Harness(cfg, tmp_path / "store.sqlite3", FakeClock()) as h:
            listener = await h.start()
            await eventually(lambda: listener.state == "failing", what="failing")
    assert listener.last_error == (
        f"ProtocolLogFile {taken} cannot be opened for writing: Is a directory"
    )
    errors = [e for e in logs if e["event"] == "listener_error"]
    assert [(e["kind"], "exc_info" in e) for e in errors] == [("permanent", False)]
