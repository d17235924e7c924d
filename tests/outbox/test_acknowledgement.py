"""Acknowledgements end to end: Dovecot in, the case engine, the outbox, aiosmtpd out."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from devkit.dovecot import DovecotSandbox
from engage_listener.config.load import load_config
from engage_listener.config.model import Config, ListenerConfig, StoreConfig
from engage_listener.config.templates import AckTemplate
from engage_listener.errors import ConfigError
from engage_listener.observe.logs import get_logger
from engage_listener.outbox.delivery import OutboxSender
from engage_listener.outbox.smtp import SmtpEndpoint, send_message
from engage_listener.service.build import build_listener
from engage_listener.store.sqlite.store import SqliteStore
from tests.support.acks import OWN, ack_config, endpoint, ingest, sender_for
from tests.support.config_xml import listener_xml, write_config
from tests.support.fakes import FakeClock
from tests.support.helpers import Harness, db_rows, listener_config, make_mail
from tests.support.helpers import deliver as deliver_once
from tests.support.servers.smtp_server import SmtpTestServer

NEW, DONE = "IMAP/New", "IMAP/Done"


async def deliver(db: Path, cfg: ListenerConfig, **kwargs: Any) -> OutboxSender:
    store = SqliteStore(db)
    await store.open()
    try:
        sender = sender_for(store, cfg, **kwargs)
        await sender.recover()
        await sender.deliver_due()
        return sender
    finally:
        await store.close()


async def test_new_case_is_acknowledged_with_rfc3834_headers(
    dovecot: DovecotSandbox, mailbox_user: str, tmp_path: Path, smtp: SmtpTestServer
) -> None:
    db = tmp_path / "s.sqlite3"
    cfg = listener_config(dovecot, mailbox_user, acknowledgement=ack_config(smtp))
    original = make_mail(1, subject="Problema con mi pedido", message_id="<orig-1@cliente.example>")
    await ingest(dovecot, mailbox_user, db, cfg, [original])
    await deliver(db, cfg)
    (received,) = smtp.messages
    msg = received.message
    assert received.rcpt_tos == ["cliente@example.com"] and received.tls
    assert received.login == SmtpTestServer.USER
    assert msg["Subject"].startswith("[Case#000001]") and "Problema con mi pedido" in msg["Subject"]
    assert msg["Auto-Submitted"] == "auto-replied"
    assert msg["X-Auto-Response-Suppress"] == "All"
    assert msg["In-Reply-To"] == "<orig-1@cliente.example>"
    assert "<orig-1@cliente.example>" in msg["References"]
    assert msg["Message-ID"].endswith("@example.org>")
    assert "Atención al Cliente" in str(msg["From"])
    assert db_rows(db, "SELECT state, smtp_message_id FROM outbox") == [("sent", msg["Message-ID"])]


async def test_no_ack_for_automatic_mail_own_address_follow_ups_and_over_the_rate_limit(
    dovecot: DovecotSandbox, mailbox_user: str, tmp_path: Path, smtp: SmtpTestServer
) -> None:
    db = tmp_path / "s.sqlite3"
    cfg = listener_config(
        dovecot, mailbox_user, acknowledgement=ack_config(smtp), automatic_mail="OpenCase"
    )
    bounce = make_mail(1, sender="MAILER-DAEMON@mx.example.net", subject="Undelivered")
    ooo = make_mail(2, subject="Fuera de oficina").replace(
        b"MIME-Version", b"Auto-Submitted: auto-replied\r\nMIME-Version"
    )
    own = make_mail(3, sender=OWN, subject="Desde nosotros")
    first = make_mail(4, sender="repite@example.com", subject="Uno")
    follow = make_mail(5, sender="repite@example.com", subject="RE: Uno")
    more = [make_mail(6 + i, sender="repite@example.com", subject=f"Tema {i}") for i in range(3)]
    await ingest(dovecot, mailbox_user, db, cfg, [bounce, ooo, own, first, follow, *more])
    await deliver(db, cfg)
    assert sorted(m.rcpt_tos[0] for m in smtp.messages) == ["repite@example.com"] * 3
    subjects = [m.message["Subject"] for m in smtp.messages]
    assert any("Uno" in s for s in subjects) and not any("RE: Uno" in s for s in subjects)


async def test_non_ascii_templates(
    dovecot: DovecotSandbox, mailbox_user: str, tmp_path: Path, smtp: SmtpTestServer
) -> None:
    template = AckTemplate(
        subject="Recibimos su reclamo nº {case_number} — ¡gracias, {customer_name}!",
        text="Hola {customer_name}:\nSu caso {case_token} quedó registrado. Año, señal, €.\n",
        html="<p>Caso <b>{case_number}</b>: «{subject}»</p>",
    )
    db = tmp_path / "s.sqlite3"
    cfg = listener_config(dovecot, mailbox_user, acknowledgement=ack_config(smtp, template))
    await ingest(dovecot, mailbox_user, db, cfg, [make_mail(1, subject="Cobro <doble>")])
    await deliver(db, cfg)
    msg = smtp.messages[0].message
    assert msg["Subject"].startswith("[Case#000001] Recibimos su reclamo nº 000001 — ¡gracias,")
    assert "Año, señal, €." in msg.get_body(("plain",)).get_content()
    assert "«Cobro &lt;doble&gt;»" in msg.get_body(("html",)).get_content()


async def test_implicit_tls_account(
    dovecot: DovecotSandbox, mailbox_user: str, tmp_path: Path
) -> None:
    (tmp_path / "ssl").mkdir()
    with SmtpTestServer(tmp_path / "ssl", "ssl") as server:
        db = tmp_path / "s.sqlite3"
        cfg = listener_config(dovecot, mailbox_user, acknowledgement=ack_config(server))
        await ingest(dovecot, mailbox_user, db, cfg, [make_mail(1)])
        await deliver(db, cfg)
        assert len(server.messages) == 1 and server.messages[0].tls


async def test_4xx_is_retried_later_and_5xx_is_recorded(
    dovecot: DovecotSandbox, mailbox_user: str, tmp_path: Path, smtp: SmtpTestServer
) -> None:
    db = tmp_path / "s.sqlite3"
    cfg = listener_config(dovecot, mailbox_user, acknowledgement=ack_config(smtp))
    await ingest(
        dovecot,
        mailbox_user,
        db,
        cfg,
        [make_mail(1, sender="a@example.com"), make_mail(2, sender="b@example.com")],
    )
    smtp.fail_next_data("451 4.3.0 try later")
    smtp.fail_next_rcpt("550 5.1.1 no such user")
    now = [1_000_000.0]
    await deliver(db, cfg, wall=lambda: now[0])
    states = dict(db_rows(db, "SELECT recipient, state FROM outbox"))
    assert states == {"a@example.com": "failed", "b@example.com": "pending"}  # RCPT, then DATA
    await deliver(db, cfg, wall=lambda: now[0])  # not due yet
    assert smtp.messages == []
    now[0] += 3600
    await deliver(db, cfg, wall=lambda: now[0])
    assert [m.rcpt_tos for m in smtp.messages] == [["b@example.com"]]
    ((error,),) = db_rows(db, "SELECT last_error FROM outbox WHERE state = 'failed'")
    assert "550" in error and "no such user" in error
    cases = db_rows(db, "SELECT sender FROM cases")
    assert len(cases) == 2


async def test_smtp_down_never_stalls_intake(
    dovecot: DovecotSandbox, mailbox_user: str, tmp_path: Path
) -> None:
    db = tmp_path / "s.sqlite3"
    (tmp_path / "down").mkdir()
    smtp = SmtpTestServer(tmp_path / "down", "starttls")  # not listening yet
    cfg = listener_config(dovecot, mailbox_user, acknowledgement=ack_config(smtp))
    await ingest(
        dovecot, mailbox_user, db, cfg, [make_mail(i, sender=f"c{i}@example.com") for i in range(3)]
    )
    assert dovecot.count(mailbox_user, DONE) == 3
    now = [1_000_000.0]
    await deliver(db, cfg, wall=lambda: now[0])
    assert {s for (s,) in db_rows(db, "SELECT state FROM outbox")} == {"pending"}
    with smtp:
        now[0] += 7200
        await deliver(db, cfg, wall=lambda: now[0])
        assert len(smtp.messages) == 3


class Crash(BaseException):
    """The process dying at a chosen point (like kill -9: nothing after it runs)."""


async def test_crash_between_commit_and_send_sends_exactly_one(
    dovecot: DovecotSandbox, mailbox_user: str, tmp_path: Path, smtp: SmtpTestServer
) -> None:
    """The sender dies after connecting and RCPT, before DATA: nothing reached the server."""
    db = tmp_path / "s.sqlite3"
    cfg = listener_config(dovecot, mailbox_user, acknowledgement=ack_config(smtp))

    async def crash_before_data(ep: SmtpEndpoint, message: Any, *, before_data: Any) -> str:
        async def crash() -> None:
            raise Crash

        return await send_message(ep, message, before_data=crash)

    await ingest(dovecot, mailbox_user, db, cfg, [make_mail(1)])
    with pytest.raises(Crash):
        await deliver(db, cfg, send=crash_before_data)
    assert db_rows(db, "SELECT state FROM outbox") == [("pending",)]
    await deliver(db, cfg)  # the restart
    await deliver(db, cfg)
    assert len(smtp.messages) == 1
    assert db_rows(db, "SELECT state FROM outbox") == [("sent",)]


async def test_crash_after_commit_before_delivery_starts_sends_exactly_one(
    dovecot: DovecotSandbox, mailbox_user: str, tmp_path: Path, smtp: SmtpTestServer
) -> None:
    db = tmp_path / "s.sqlite3"
    cfg = listener_config(dovecot, mailbox_user, acknowledgement=ack_config(smtp))
    await ingest(dovecot, mailbox_user, db, cfg, [make_mail(1)])  # committed, then "killed"
    assert db_rows(db, "SELECT state FROM outbox") == [("pending",)]
    await deliver(db, cfg)
    await deliver(db, cfg)
    assert len(smtp.messages) == 1


async def test_crash_between_send_and_record_sends_exactly_one(
    dovecot: DovecotSandbox, mailbox_user: str, tmp_path: Path, smtp: SmtpTestServer
) -> None:
    db = tmp_path / "s.sqlite3"
    cfg = listener_config(dovecot, mailbox_user, acknowledgement=ack_config(smtp))

    async def crash_after(ep: SmtpEndpoint, message: Any, *, before_data: Any) -> str:
        await send_message(ep, message, before_data=before_data)
        raise Crash

    await ingest(dovecot, mailbox_user, db, cfg, [make_mail(1)])
    with pytest.raises(Crash):
        await deliver(db, cfg, send=crash_after)
    await deliver(db, cfg)  # the restart
    await deliver(db, cfg)
    assert len(smtp.messages) == 1
    assert db_rows(db, "SELECT state FROM outbox") == [("uncertain",)]


async def test_daemon_sends_acks_as_mail_arrives(
    dovecot: DovecotSandbox, mailbox_user: str, tmp_path: Path, smtp: SmtpTestServer
) -> None:
    db = tmp_path / "s.sqlite3"
    cfg = listener_config(
        dovecot, mailbox_user, acknowledgement=ack_config(smtp), sync_max_changes_count=1
    )
    dovecot.create_folder(mailbox_user, NEW)
    dovecot.create_folder(mailbox_user, DONE)
    async with Harness(cfg, db, FakeClock()) as h:
        wake = asyncio.Event()
        listener = build_listener(cfg, h.store, h.clock, h.stop, None, wake)
        sender = OutboxSender(
            h.store, {cfg.id: endpoint(cfg)}, send_message, wake=wake, stop=h.stop, log=get_logger()
        )
        tasks = [asyncio.create_task(listener.run()), asyncio.create_task(sender.run())]
        dovecot.append(mailbox_user, NEW, make_mail(1))
        for _ in range(200):
            if smtp.messages:
                break
            await asyncio.sleep(0.05)
        h.stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 15)
    assert len(smtp.messages) == 1


def _config_with(tmp_path: Path, ack_xml: str) -> Path:
    (tmp_path / "ca.pem").write_text("x")
    server = type("S", (), {"host": "h", "imap_port": 143, "ca_file": tmp_path / "ca.pem"})
    xml = listener_xml(server, "soporte@example.org", inner=ack_xml)  # type: ignore[arg-type]
    return write_config(tmp_path / "el.xml", xml)


def test_acknowledgement_without_its_own_smtp_account_is_a_config_error(tmp_path: Path) -> None:
    path = _config_with(
        tmp_path,
        "<Acknowledgement><FromAddress>a@b.c</FromAddress>"
        "<Subject>{nope}</Subject></Acknowledgement>\n",
    )
    with pytest.raises(ConfigError) as info:
        load_config(path)
    text = str(info.value)
    assert "Smtp" in text and "Acknowledgement" in text and f"{path}:" in text


def test_acknowledgement_block_with_template_files(tmp_path: Path) -> None:
    (tmp_path / "ack.txt").write_text("Caso {case_number}: gracias, {customer_name}.\n")
    path = _config_with(
        tmp_path,
        """<Acknowledgement Enabled="true">
      <Smtp><HostName>smtp.example.org</HostName><Security>SSL</Security>
        <UserName>u</UserName><Password>smtp-secret</Password></Smtp>
      <FromAddress>Soporte@Example.org</FromAddress><FromName>Soporte</FromName>
      <BodyFile>ack.txt</BodyFile><MaxPerRecipientPerHour>5</MaxPerRecipientPerHour>
      <OwnAddresses>ventas@example.org</OwnAddresses>
    </Acknowledgement>
""",
    )
    (lst,) = load_config(path).imap_listeners
    ack = lst.acknowledgement
    assert ack is not None and ack.enabled
    assert (ack.smtp.host, ack.smtp.port, ack.smtp.security) == ("smtp.example.org", 465, "SSL")
    assert ack.template.text.startswith("Caso {case_number}")
    assert ack.max_per_recipient_per_hour == 5
    assert set(ack.own_addresses) == {"soporte@example.org", "ventas@example.org"}
    assert "smtp-secret" not in repr(lst)


async def test_smtp_session_goes_to_its_own_protocol_log_without_secrets(
    dovecot: DovecotSandbox, mailbox_user: str, tmp_path: Path, smtp: SmtpTestServer
) -> None:
    db = tmp_path / "s.sqlite3"
    (tmp_path / "logs").mkdir()
    pattern = str(tmp_path / "logs" / "%listener%.log")
    cfg = listener_config(
        dovecot, mailbox_user, acknowledgement=ack_config(smtp), protocol_log_file=pattern
    )
    await ingest(dovecot, mailbox_user, db, cfg, [make_mail(1)])
    config = Config(tmp_path / "el.xml", (cfg,), True, StoreConfig(db))
    assert await deliver_once(config) == 1
    text = (tmp_path / "logs" / "Default.log").read_text()
    smtp_text = (tmp_path / "logs" / "Default-smtp.log").read_text()  # a file of its own
    assert "LOGIN ***" in text and "MAIL FROM:" not in text  # the IMAP session
    assert "AUTH" in smtp_text and "MAIL FROM:" in smtp_text and "DATA <" in smtp_text
    for logged in (text, smtp_text):
        assert SmtpTestServer.PASSWORD not in logged and DovecotSandbox.PASSWORD not in logged
