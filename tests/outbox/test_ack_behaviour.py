"""Acknowledgement behaviour an operator relies on: refusals are recorded and shown, a dead
SMTP server never holds up intake, the routing hook may veto, OnFollowUps from the XML."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from devkit.dovecot import DovecotSandbox
from engage_listener.cases.ack import AckIdentity
from engage_listener.cases.engine import AckSettings, CaseEngine, EngineSettings
from engage_listener.cases.hooks import HookContext, RoutingDecision, SqlExecutor
from engage_listener.config.load import load_config
from engage_listener.config.templates import DEFAULT_TEMPLATE
from engage_listener.observe.logs import get_logger
from engage_listener.outbox.delivery import OutboxSender
from engage_listener.outbox.smtp import SmtpEndpoint, send_message
from engage_listener.service.build import build_listener
from engage_listener.store.interface import MailKey
from engage_listener.store.sqlite.store import SqliteStore
from tests.support.acks import OWN, ack_config, ingest
from tests.support.config_xml import ack_xml, listener_xml, write_config
from tests.support.daemon import events
from tests.support.fakes import FakeClock
from tests.support.helpers import Harness, db_rows, eventually, listener_config, make_mail
from tests.support.servers.smtp_server import SmtpTestServer

NEW, DONE = "IMAP/New", "IMAP/Done"


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "engage_listener", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _smtp_ack_xml(server: SmtpTestServer, **extra: str) -> str:
    """An Acknowledgement block that logs in to the test SMTP server over STARTTLS."""
    login = {
        "UserName": SmtpTestServer.USER,
        "Password": SmtpTestServer.PASSWORD,
        "CaFile": str(server.ca_file),
    }
    return ack_xml(server.port, host=server.host, security="StartTls", smtp=login, **extra)


# ----- 1. a 5xx is recorded, shown by `cases` and logged ---------------------------------------
@pytest.mark.parametrize(
    ("step", "reply", "reason"),
    [
        ("rcpt", "550 5.1.1 <cliente@example.com>: no such user", "no such user"),
        ("data", "554 5.7.1 message refused as spam", "message refused as spam"),
    ],
)
def test_5xx_marks_the_ack_failed_with_the_servers_reason_in_cases_and_the_log(
    dovecot: DovecotSandbox,
    mailbox_user: str,
    tmp_path: Path,
    smtp: SmtpTestServer,
    step: str,
    reply: str,
    reason: str,
) -> None:
    dovecot.create_folder(mailbox_user, DONE)
    dovecot.append(mailbox_user, NEW, make_mail(1, subject="Factura duplicada"))
    xml = listener_xml(dovecot, mailbox_user, inner=_smtp_ack_xml(smtp))
    config = write_config(tmp_path / "el.xml", xml)
    db = tmp_path / "store.sqlite3"
    (smtp.fail_next_rcpt if step == "rcpt" else smtp.fail_next_data)(reply)

    run = _cli("run", "--once", "--log-format", "json", "--config", str(config))
    assert run.returncode == 0, run.stdout + run.stderr
    assert smtp.messages == []
    assert dovecot.count(mailbox_user, DONE) == 1  # the case itself is unaffected
    ((state, error, attempts),) = db_rows(db, "SELECT state, last_error, attempts FROM outbox")
    code = reply.split(maxsplit=1)[0]
    assert (state, attempts) == ("failed", 1)
    assert code in error and reason in error

    log_file = tmp_path / "run.log"
    log_file.write_text(run.stdout)
    (failed,) = [e for e in events(log_file) if e["event"] == "ack_failed"]
    assert failed["recipient"] == "cliente@example.com"
    assert code in str(failed["error"]) and reason in str(failed["error"])
    assert failed["level"] == "error"
    assert not [e for e in events(log_file) if e["event"] in ("ack_sent", "ack_retry")]
    assert SmtpTestServer.PASSWORD not in run.stdout + run.stderr

    text = _cli("cases", "--config", str(config))
    assert text.returncode == 0, text.stderr
    (line,) = [row for row in text.stdout.splitlines() if "Factura duplicada" in row]
    assert "[ack failed: " in line and code in line and reason in line
    listed = _cli("cases", "--json", "--config", str(config))
    assert listed.returncode == 0, listed.stderr
    (case,) = json.loads(listed.stdout)
    assert case["ack"].startswith("failed: ")
    assert code in case["ack"] and reason in case["ack"]
    assert case["ack"] == f"failed: {error}"


# ----- 2. a dead SMTP server never stalls intake -----------------------------------------------
@pytest.fixture
def black_hole() -> Iterator[socket.socket]:
    """A TCP port that completes connections (the kernel's backlog) but never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    try:
        yield sock
    finally:
        sock.close()


def _waiting_connections(sock: socket.socket) -> int:
    """How many connections sit in the backlog (accepting them now, at the very end)."""
    sock.setblocking(False)
    count = 0
    while True:
        try:
            conn, _ = sock.accept()
        except BlockingIOError:
            return count
        conn.close()
        count += 1


async def test_smtp_that_never_answers_never_stalls_intake(
    dovecot: DovecotSandbox, mailbox_user: str, tmp_path: Path, black_hole: socket.socket
) -> None:
    db = tmp_path / "s.sqlite3"
    (tmp_path / "smtp").mkdir()
    unused = SmtpTestServer(tmp_path / "smtp", "plain", auth=False)  # only for ack_config
    cfg = listener_config(
        dovecot,
        mailbox_user,
        acknowledgement=ack_config(unused, max_per_recipient_per_hour=100),
        sync_max_changes_count=1,
    )
    port = black_hole.getsockname()[1]
    dead = SmtpEndpoint("127.0.0.1", port, "None", timeout=300.0)
    dovecot.create_folder(mailbox_user, NEW)
    dovecot.create_folder(mailbox_user, DONE)
    dovecot.append(mailbox_user, NEW, make_mail(0, sender="c0@example.com"))
    async with Harness(cfg, db, FakeClock()) as h:
        wake = asyncio.Event()
        listener = build_listener(cfg, h.store, h.clock, h.stop, None, wake)
        sender = OutboxSender(
            h.store, {cfg.id: dead}, send_message, wake=wake, stop=h.stop, log=get_logger()
        )
        intake = asyncio.create_task(listener.run())
        outbox = asyncio.create_task(sender.run())
        try:
            # The sender took the first row and hangs on the silent server...
            await eventually(
                lambda: db_rows(db, "SELECT attempts FROM outbox") == [(1,)],
                timeout=20,
                what="the sender trying the first acknowledgement",
            )
            # ...while mail keeps arriving and turning into cases.
            for n in range(1, 4):
                dovecot.append(mailbox_user, NEW, make_mail(n, sender=f"c{n}@example.com"))
            await eventually(
                lambda: dovecot.count(mailbox_user, DONE) == 4,
                timeout=30,
                what="all four mails moved to the output folder",
            )
            assert not outbox.done(), "the sender must still be stuck on the dead server"
            assert not intake.done()
        finally:
            h.stop.set()
            await asyncio.wait_for(intake, 15)
            outbox.cancel()
            await asyncio.gather(outbox, return_exceptions=True)
    assert dovecot.count(mailbox_user, NEW) == 0
    assert sorted(s for (s,) in db_rows(db, "SELECT sender FROM cases")) == [
        f"c{n}@example.com" for n in range(4)
    ]
    rows = db_rows(db, "SELECT recipient, state, sent_at FROM outbox ORDER BY id")
    assert sorted(r[0] for r in rows) == [f"c{n}@example.com" for n in range(4)]
    assert {(state, sent) for _, state, sent in rows} == {("pending", None)}
    assert _waiting_connections(black_hole) == 1  # one connection, never answered


# ----- 3. the routing hook's veto --------------------------------------------------------------
class VetoHook:
    """A routing hook that vetoes the acknowledgement of mail whose subject says so."""

    name = "veto"

    def __init__(self) -> None:
        self.seen: list[str] = []

    async def run(self, ctx: HookContext, sql: SqlExecutor) -> RoutingDecision:
        self.seen.append(ctx.message.subject)
        if "sin acuse" in ctx.message.subject:
            return RoutingDecision(inbox="Silencio", acknowledge=False)
        return RoutingDecision(inbox="General")


def _ack_settings() -> AckSettings:
    return AckSettings(
        AckIdentity(OWN, "Soporte"), DEFAULT_TEMPLATE, (OWN,), max_per_recipient_per_hour=100
    )


async def test_hook_returning_acknowledge_false_leaves_no_outbox_row(store: SqliteStore) -> None:
    hook = VetoHook()
    engine = CaseEngine(
        store, EngineSettings("L", extract_attachments=False, hook=hook, ack=_ack_settings())
    )
    vetoed = await engine.ingest(
        MailKey("L", NEW, "1", "1"), make_mail(1, sender="a@example.com", subject="Baja sin acuse")
    )
    kept = await engine.ingest(
        MailKey("L", NEW, "1", "2"), make_mail(2, sender="b@example.com", subject="Baja normal")
    )
    assert hook.seen == ["Baja sin acuse", "Baja normal"]
    assert vetoed.new_case and kept.new_case
    assert vetoed.ack == "skipped: routing hook vetoed the acknowledgement"
    assert kept.ack == "queued"
    assert db_rows(store.path, "SELECT recipient, case_id FROM outbox") == [
        ("b@example.com", kept.case_id)
    ]
    assert db_rows(store.path, "SELECT sender, inbox FROM cases ORDER BY id") == [
        ("a@example.com", "Silencio"),
        ("b@example.com", "General"),
    ]
    acknowledge = dict(db_rows(store.path, "SELECT sender, acknowledge FROM messages"))
    assert acknowledge["a@example.com"] == 0  # the veto is recorded on the message


async def test_the_same_mail_without_a_hook_is_acknowledged(store: SqliteStore) -> None:
    """The control for the veto test: the subject alone does not prevent an acknowledgement."""
    engine = CaseEngine(store, EngineSettings("L", extract_attachments=False, ack=_ack_settings()))
    done = await engine.ingest(
        MailKey("L", NEW, "1", "1"), make_mail(1, sender="a@example.com", subject="Baja sin acuse")
    )
    assert done.ack == "queued"
    assert db_rows(store.path, "SELECT recipient FROM outbox") == [("a@example.com",)]


# ----- 4. OnFollowUps from the XML -------------------------------------------------------------
@pytest.mark.parametrize("on_follow_ups", ["True", "true", None])
async def test_on_follow_ups_from_the_xml_acknowledges_follow_ups(
    dovecot: DovecotSandbox,
    mailbox_user: str,
    tmp_path: Path,
    smtp: SmtpTestServer,
    on_follow_ups: str | None,
) -> None:
    element = {"OnFollowUps": on_follow_ups} if on_follow_ups else {}
    xml = listener_xml(dovecot, mailbox_user, inner=_smtp_ack_xml(smtp, **element))
    (cfg,) = load_config(write_config(tmp_path / "el.xml", xml)).imap_listeners
    assert cfg.acknowledgement is not None
    assert cfg.acknowledgement.on_follow_ups is (on_follow_ups is not None)
    db = tmp_path / "s.sqlite3"
    first = make_mail(1, subject="Pedido 4711 sin entregar", message_id="<p4711@cliente.example>")
    follow = make_mail(
        2, subject="RE: Pedido 4711 sin entregar", message_id="<p4711-2@cliente.example>"
    )
    await ingest(dovecot, mailbox_user, db, cfg, [first])
    await ingest(dovecot, mailbox_user, db, cfg, [follow])
    ((case_id,),) = db_rows(db, "SELECT id FROM cases")  # the follow-up joined the case
    assert db_rows(db, "SELECT count(*) FROM messages WHERE case_id = ?", (case_id,)) == [(2,)]
    rows = db_rows(
        db,
        "SELECT m.message_id FROM outbox o JOIN messages m ON m.id = o.message_row"
        " WHERE o.case_id = ? ORDER BY o.id",
        (case_id,),
    )
    expected = ["p4711@cliente.example"]
    if on_follow_ups is not None:
        expected.append("p4711-2@cliente.example")
    assert [r[0] for r in rows] == expected
