"""No control character from mail reaches the operator's terminal (issue 14, point 9).

An address carrying ESC sequences retitled and cleared the operator's terminal when
`cases` listed it. A hostile mail goes through the real pipeline (Dovecot in, the real
store), then every table and text output of the real CLI is read as bytes.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import types
from pathlib import Path

import pytest

from devkit.dovecot import DovecotSandbox
from engage_listener.cases.engine import CaseEngine
from engage_listener.config.load import load_config
from engage_listener.observe.status import write_heartbeats
from engage_listener.ops.terminal import visible, visible_lines
from engage_listener.service.build import engine_settings
from engage_listener.store.interface import MailKey
from engage_listener.store.sqlite.store import SqliteStore
from tests.support.config_xml import ack_xml, config_text, listener_xml
from tests.support.fakes import FakeClock
from tests.support.helpers import Harness

EVIL = "\x1b]0;pwned\x07\x1b[2J"
CONTROL_BYTES = (b"\x1b", b"\x07", b"\xc2\x9b")  # ESC, BEL, and CSI as UTF-8 (C1)


def encoded_word(text: str) -> str:
    return f"=?utf-8?b?{base64.b64encode(text.encode()).decode()}?="


def hostile_mail(address: str = f"ana\x9b2J@ex{EVIL}ample.com") -> bytes:
    return (
        f'From: "Ana {EVIL}" <{address}>\r\n'
        "To: soporte@example.org\r\n"
        f"Subject: Ayuda {EVIL} {encoded_word('y ' + EVIL)}\r\n"
        f"Message-ID: <hostile.{len(address)}@example.com>\r\n"
        "Date: Mon, 1 Jan 2024 10:00:00 +0000\r\n"
        "\r\n"
        "hola\r\n"
    ).encode()


def config_xml(dovecot: DovecotSandbox, user: str) -> str:
    # never sent here: the acknowledgement only waits in the outbox
    return config_text(listener_xml(dovecot, user, inner=ack_xml(2525)))


def run_cli(*args: str) -> bytes:
    done = subprocess.run(
        [sys.executable, "-m", "engage_listener", *args],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    return done.stdout


@pytest.fixture
async def hostile_store(dovecot: DovecotSandbox, mailbox_user: str, tmp_path: Path) -> Path:
    """A config whose store holds the hostile mail's case, acknowledgement, quarantine
    entry (its reason quoting the mail) and a heartbeat whose last error quotes it."""
    path = tmp_path / "el.xml"
    path.write_text(config_xml(dovecot, mailbox_user))
    config = load_config(path)
    (cfg,) = config.listeners
    dovecot.create_folder(mailbox_user, "IMAP/Done")
    dovecot.append(mailbox_user, "IMAP/New", hostile_mail())
    dovecot.append(mailbox_user, "IMAP/New", hostile_mail(address="bea@example.com"))
    async with Harness(cfg, config.store.path, FakeClock()) as h:
        assert h.listener is not None
        assert (await h.listener.run_once()).ingested == 2
        engine = CaseEngine(h.store, engine_settings(cfg, None))
        key = MailKey(cfg.id, "IMAP/New", "1", "999")
        await engine.quarantine(key, hostile_mail(), f"bad header {EVIL}\x9b", 3)
    store = SqliteStore(config.store.path)
    await store.open()
    try:
        worker = types.SimpleNamespace(state="idle", last_error=f"server said {EVIL}")
        await write_heartbeats(store, {cfg.id: worker})
        async with store.transaction() as tx:  # what a hostile SMTP server's reply leaves
            await tx.execute("UPDATE outbox SET last_error = ?", (f"550 {EVIL}",))
    finally:
        await store.close()
    return path


COMMANDS = [
    ["cases"],
    ["quarantine", "list"],
    ["quarantine", "show", "1"],
    ["acks", "--state", "all"],
    ["search", "Default", "--folder", "IMAP/Done"],
    ["status"],
    ["customers", "list"],
]


async def test_no_control_character_from_mail_reaches_the_terminal(hostile_store: Path) -> None:
    config = str(hostile_store)
    outputs = {" ".join(c): run_cli(*c, "--config", config) for c in COMMANDS}
    for command, out in outputs.items():
        found = [b for b in CONTROL_BYTES if b in out]
        assert not found, f"{command} printed {found}: {out!r}"
    # The hostile text is shown, as visible escapes: the operator sees what came in.
    assert b"\\x1b" in outputs["cases"]
    assert (
        b"\\x1b" in outputs["quarantine list"]
        and b"bad header \\x1b]0;pwned" in outputs["quarantine list"]
    )
    assert b"\\x1b" in outputs["search Default --folder IMAP/Done"]
    assert b"server said \\x1b]0;pwned\\x07\\x1b[2J" in outputs["status"]
    assert b"550 \\x1b]0;pwned" in outputs["acks --state all"]


async def test_json_outputs_escape_controls_and_keep_the_values(hostile_store: Path) -> None:
    config = str(hostile_store)
    for command in (["cases"], ["quarantine", "list"], ["acks", "--state", "all"], ["status"]):
        out = run_cli(*command, "--json", "--config", config)
        assert not [b for b in CONTROL_BYTES if b in out], f"{command}: {out!r}"
        json.loads(out)  # still valid JSON, the values intact
    (entry,) = json.loads(run_cli("quarantine", "list", "--json", "--config", config))
    assert entry["reason"] == f"bad header {EVIL}\x9b"


def test_visible_escapes_every_control_even_tabs_and_newlines_in_a_cell() -> None:
    assert visible("a\tb\nc\x00\x7f\x85\u202e") == "a\\x09b\\x0ac\\x00\\x7f\\x85\\u202e"
    assert visible("Peña 📨") == "Peña 📨"
    assert visible_lines("one\x1b\ntwo") == "one\\x1b\ntwo"
