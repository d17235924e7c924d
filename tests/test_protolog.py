"""Protocol log files: masking, bodies only on request, rotation, start-up checks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from engage_listener.protolog import ProtocolLog, expand_path, mask_command
from tests.test_daemon import listener_xml, write_config


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
