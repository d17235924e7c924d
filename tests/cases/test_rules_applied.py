"""Issue 18 through a running listener against Dovecot: the Rules applied before the
routing hook (which sees their outcome and the whole mail), the new text stored, and a
web form's customer in Reply-To (CustomerFrom, Acknowledgement/Recipient)."""

from __future__ import annotations

import email.utils
from pathlib import Path

from devkit.dovecot import DovecotSandbox
from engage_listener.cases.hooks import HookContext, RoutingDecision, SqlExecutor
from engage_listener.config.load import load_config
from engage_listener.config.model import ListenerConfig
from engage_listener.ops.commands import replay_quarantine
from engage_listener.service.build import build_listener
from engage_listener.sources.imap.listener import Listener
from tests.support.config_xml import DONE, NEW, OWN, listener_xml, write_config
from tests.support.fakes import FakeClock
from tests.support.helpers import Harness, db_rows
from tests.support.rules import ISSUE_EXAMPLE

ACK = (
    "<Acknowledgement><Smtp><HostName>127.0.0.1</HostName><Port>2525</Port>"
    f"<Security>None</Security></Smtp><FromAddress>{OWN}</FromAddress>{{extra}}"
    "</Acknowledgement>"
)
# The issue's example plus a rule with the other actions (SetProcess, NoAcknowledgement).
MORE_RULES = ISSUE_EXAMPLE.replace(
    "</Rules>",
    '<Rule Name="Ventas"><Match Field="Subject" Contains="precio"/>'
    "<SetProcess>Ventas</SetProcess><NoAcknowledgement/></Rule></Rules>",
)


def mail(
    subject: str,
    *,
    sender: str = "Ana <ana@cliente.example>",
    to: str = OWN,
    headers: str = "",
    body: str = "Hola",
) -> bytes:
    return (
        f"From: {sender}\r\nTo: {to}\r\nSubject: {subject}\r\n{headers}"
        f"Date: {email.utils.formatdate()}\r\nMessage-ID: {email.utils.make_msgid()}\r\n"
        "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
        f"{body}\r\n"
    ).encode()


def config(tmp_path: Path, dovecot: DovecotSandbox, user: str, inner: str) -> ListenerConfig:
    path = write_config(
        tmp_path / "engage.xml", listener_xml(dovecot, user, inner=inner, ErrorFolder="IMAP/Err")
    )
    return load_config(path).listeners[0]


def _listener(h: Harness) -> Listener:
    assert h.listener is not None
    return h.listener


class Recorder:
    """A Python hook that records what it saw and moves 'Factura urgente' elsewhere."""

    name = "recorder"

    def __init__(self) -> None:
        self.seen: list[HookContext] = []

    async def run(self, ctx: HookContext, sql: SqlExecutor) -> RoutingDecision:
        self.seen.append(ctx)
        if "urgente" in ctx.message.subject:
            return RoutingDecision(inbox="Urgencias", tags=("hook",), status="closed")
        return RoutingDecision()


async def test_the_issue_rules_route_discard_quarantine_and_veto_acks(
    dovecot: DovecotSandbox, mailbox_user: str, tmp_path: Path
) -> None:
    cfg = config(tmp_path, dovecot, mailbox_user, MORE_RULES + ACK.format(extra=""))
    dovecot.create_folder(mailbox_user, DONE)
    dovecot.append_many(
        mailbox_user,
        NEW,
        [
            mail(
                "Factura 123", to="Facturación <facturacion@example.org>", headers=f"Cc: {OWN}\r\n"
            ),
            mail("Factura urgente", to="facturacion@example.org"),
            mail("Oferta", headers="X-Spam-Flag: YES\r\n"),
            mail("Hola", sender="x@mx.spammer.example"),
            mail("Consulta de precio"),
            mail("Consulta general"),
        ],
    )
    hook = Recorder()
    db = tmp_path / "s.sqlite3"
    async with Harness(cfg, db, FakeClock()) as h:
        result = await build_listener(cfg, h.store, h.clock, h.stop, hook).run_once()
    assert (result.ingested, result.failed, result.quarantined) == (5, 0, 1)
    assert dovecot.count(mailbox_user, NEW) == 0
    assert dovecot.count(mailbox_user, DONE) == 5
    assert dovecot.count(mailbox_user, "IMAP/Err") == 1
    cases = db_rows(db, "SELECT subject, process, inbox, priority, status FROM cases ORDER BY id")
    assert cases == [
        ("Factura 123", None, "Facturacion", 2, "open"),
        ("Factura urgente", None, "Urgencias", 2, "closed"),  # the hook overrode the inbox
        ("Consulta de precio", "Ventas", None, None, "open"),
        ("Consulta general", None, None, None, "open"),
    ]
    tags = db_rows(db, "SELECT c.subject, t.tag FROM case_tags t JOIN cases c ON c.id = t.case_id")
    assert sorted(tags) == [
        ("Factura 123", "billing"),
        ("Factura urgente", "billing"),
        ("Factura urgente", "hook"),
    ]
    # Discard: the mail is kept, marked ignored, without a case; its ledger row says so.
    assert db_rows(db, "SELECT subject, ignored, case_id FROM messages WHERE ignored = 1") == [
        ("Oferta", 1, None)
    ]
    # Quarantine: kept with the rule's name and reason, in the error folder.
    [(reason, subject)] = db_rows(db, "SELECT reason, subject FROM quarantine")
    assert reason == "rule Banned: banned" and subject == "Hola"
    assert db_rows(db, "SELECT count(*) FROM customers WHERE name LIKE '%spammer%'") == [(0,)]
    # Acknowledgements: NoAcknowledgement held back the Ventas one only.
    acked = db_rows(
        db, "SELECT c.subject FROM outbox o JOIN cases c ON c.id = o.case_id ORDER BY o.id"
    )
    assert acked == [("Factura 123",), ("Factura urgente",), ("Consulta general",)]
    # The hook ran for the four cases only, after the Rules, and saw their outcome.
    assert [c.message.subject for c in hook.seen] == [s for s, *_ in cases]
    first = hook.seen[0]
    assert first.rules.matched == ("Facturas",) and first.rules.inbox == "Facturacion"
    assert first.rules.tags == ("billing",) and first.rules.priority == 2
    assert [a.address for a in first.message.to] == ["facturacion@example.org"]
    assert [a.name for a in first.message.to] == ["Facturación"]
    assert [a.address for a in first.message.cc] == [OWN]
    assert first.message.delivered_to == OWN  # the To/Cc address that is the listener's own
    assert first.message.headers["SUBJECT"] == "Factura 123"
    assert hook.seen[2].rules.process == "Ventas" and hook.seen[2].rules.acknowledge is False
    assert hook.seen[2].case.process == "Ventas"  # the case was opened in the rule's process


async def test_hooks_see_the_whole_mail_and_new_text_is_stored(
    dovecot: DovecotSandbox, mailbox_user: str, tmp_path: Path
) -> None:
    cfg = config(tmp_path, dovecot, mailbox_user, "")
    reply = (
        "Sigue sin funcionar.\r\n\r\n"
        "El lun, 3 nov 2025 a las 10:00, Soporte <soporte@example.org> escribió:\r\n"
        "> ¿Probó reiniciar?\r\n"
    )
    raw = (
        "From: Ana <ana@cliente.example>\r\nTo: soporte@example.org\r\n"
        "Reply-To: Ana Casa <ana@casa.example>\r\nDelivered-To: soporte+web@example.org\r\n"
        "Subject: =?utf-8?q?Re=3A_Impresi=C3=B3n?=\r\nX-Ticket-Kind: queja\r\n"
        f"Date: {email.utils.formatdate()}\r\nMessage-ID: <r1@cliente.example>\r\n"
        'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="b"\r\n\r\n'
        "--b\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n"
        f"\r\n{reply}--b\r\nContent-Type: application/pdf\r\n"
        'Content-Disposition: attachment; filename="factura.pdf"\r\n'
        "Content-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQK\r\n--b--\r\n"
    ).encode()
    dovecot.create_folder(mailbox_user, DONE)
    dovecot.append_many(mailbox_user, NEW, [raw])
    hook = Recorder()
    db = tmp_path / "s.sqlite3"
    async with Harness(cfg, db, FakeClock()) as h:
        result = await build_listener(cfg, h.store, h.clock, h.stop, hook).run_once()
    assert result.ingested == 1
    [ctx] = hook.seen
    m = ctx.message
    assert [a.address for a in m.reply_to] == ["ana@casa.example"]
    assert m.delivered_to == "soporte+web@example.org"
    assert m.headers["x-ticket-kind"] == "queja" and m.headers["Subject"] == "Re: Impresión"
    assert m.new_text == "Sigue sin funcionar."
    assert "¿Probó reiniciar?" in m.text
    assert [(a.filename, a.content_type, a.size) for a in m.attachments] == [
        ("factura.pdf", "application/pdf", 9)
    ]
    assert ctx.customer is not None and ctx.customer.addresses == ("ana@cliente.example",)
    assert db_rows(db, "SELECT new_text FROM messages") == [("Sigue sin funcionar.",)]


WEB_FORM: dict[str, str] = dict(
    sender="Formulario <no-reply@forms.example>",
    headers="Reply-To: María López <maria@cliente.example>\r\n",
    body="Nombre: María\r\nMensaje: no llega mi pedido",
)


async def test_a_web_form_customer_in_reply_to_gets_the_case_and_the_ack(
    dovecot: DovecotSandbox, mailbox_user: str, tmp_path: Path
) -> None:
    ack = ACK.format(extra="<Recipient>ReplyTo</Recipient>")
    cfg = config(tmp_path, dovecot, mailbox_user, f"<CustomerFrom>ReplyTo</CustomerFrom>{ack}")
    assert cfg.customer_from == "ReplyTo"
    assert cfg.acknowledgement is not None and cfg.acknowledgement.recipient == "ReplyTo"
    dovecot.create_folder(mailbox_user, DONE)
    own_reply = mail("Eco", sender="no-reply@forms.example", headers=f"Reply-To: {OWN}\r\n")
    dovecot.append_many(mailbox_user, NEW, [mail("Pedido", **WEB_FORM), own_reply])
    db = tmp_path / "s.sqlite3"
    async with Harness(cfg, db, FakeClock()) as h:
        result = await _listener(h).run_once()
    assert result.ingested == 2
    assert db_rows(db, "SELECT subject, sender, sender_name FROM cases") == [
        ("Pedido", "maria@cliente.example", "María López")
    ]
    customer = "SELECT a.address FROM cases c JOIN customer_addresses a USING (customer_id)"
    assert db_rows(db, customer) == [("maria@cliente.example",)]
    assert db_rows(db, "SELECT recipient FROM outbox") == [("maria@cliente.example",)]
    # Reply-To one of our own addresses: From is used, and a no-reply From is automatic.
    assert db_rows(db, "SELECT subject, ignored FROM messages WHERE case_id IS NULL") == [
        ("Eco", 1)
    ]


async def test_by_default_the_web_form_is_automatic_mail_and_from_is_the_customer(
    dovecot: DovecotSandbox, mailbox_user: str, tmp_path: Path
) -> None:
    cfg = config(tmp_path, dovecot, mailbox_user, ACK.format(extra=""))
    dovecot.create_folder(mailbox_user, DONE)
    dovecot.append_many(mailbox_user, NEW, [mail("Pedido", **WEB_FORM)])
    db = tmp_path / "s.sqlite3"
    async with Harness(cfg, db, FakeClock()) as h:
        assert (await _listener(h).run_once()).ingested == 1
    assert db_rows(db, "SELECT count(*) FROM cases") == [(0,)]  # AutomaticMail Ignore
    assert db_rows(db, "SELECT count(*) FROM outbox") == [(0,)]


async def test_recipient_reply_to_alone_keeps_the_customer_by_from(
    dovecot: DovecotSandbox, mailbox_user: str, tmp_path: Path
) -> None:
    cfg = config(
        tmp_path, dovecot, mailbox_user, ACK.format(extra="<Recipient>ReplyTo</Recipient>")
    )
    assert cfg.customer_from == "From"
    dovecot.create_folder(mailbox_user, DONE)
    dovecot.append_many(mailbox_user, NEW, [mail("Pedido", **WEB_FORM)])
    db = tmp_path / "s.sqlite3"
    async with Harness(cfg, db, FakeClock()) as h:
        assert (await _listener(h).run_once()).ingested == 1
    assert db_rows(db, "SELECT sender FROM cases") == [("no-reply@forms.example",)]
    assert db_rows(db, "SELECT recipient FROM outbox") == [("maria@cliente.example",)]


async def test_a_mail_a_rule_quarantines_stays_held_when_replayed(
    dovecot: DovecotSandbox, mailbox_user: str, tmp_path: Path
) -> None:
    path = write_config(
        tmp_path / "engage.xml", listener_xml(dovecot, mailbox_user, inner=ISSUE_EXAMPLE)
    )
    loaded = load_config(path)
    dovecot.create_folder(mailbox_user, DONE)
    dovecot.append_many(mailbox_user, NEW, [mail("Hola", sender="x@spammer.example")])
    async with Harness(loaded.listeners[0], loaded.store.path, FakeClock()) as h:
        assert (await _listener(h).run_once()).quarantined == 1
    [(entry,)] = db_rows(loaded.store.path, "SELECT id FROM quarantine")
    assert await replay_quarantine(loaded, [entry]) == [
        f"{entry}: not replayed: rule Banned: banned"
    ]
    assert db_rows(loaded.store.path, "SELECT state FROM quarantine") == [("held",)]
    assert db_rows(loaded.store.path, "SELECT count(*) FROM cases") == [(0,)]
