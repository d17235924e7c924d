"""Issue 14.6: acknowledgements cannot be turned into spam. The per-recipient limit ignores
`+tags`, each listener sends at most MaxPerHour (the rest are recorded `suppressed`), values
from the mail are cut and cleaned, and RequireAuthenticated acknowledges only mail our own
server saw pass DMARC."""

from __future__ import annotations

import asyncio
import email
import email.policy
import itertools
import re
from email.header import Header, decode_header, make_header

import pytest

from engage_listener.cases.ack import AckIdentity
from engage_listener.cases.engine import AckSettings, CaseEngine, EngineSettings
from engage_listener.config.templates import DEFAULT_TEMPLATE, AckTemplate
from engage_listener.observe.logs import get_logger
from engage_listener.ops import admin
from engage_listener.ops.cli_parser import build_parser
from engage_listener.outbox.delivery import OutboxSender
from engage_listener.outbox.smtp import send_message
from engage_listener.store.interface import MailKey
from engage_listener.store.sqlite.store import SqliteStore
from tests.support.helpers import db_rows
from tests.support.servers.smtp_server import SmtpTestServer

_uids = itertools.count(1)
OWN = "soporte@example.org"
MX = "mx.example.org"


pytestmark = pytest.mark.smtp("plain", auth=False)


def acking(
    store: SqliteStore, template: AckTemplate = DEFAULT_TEMPLATE, **ack: object
) -> CaseEngine:
    settings = AckSettings(AckIdentity(OWN, "Soporte"), template, (OWN,), **ack)  # type: ignore[arg-type]
    return CaseEngine(store, EngineSettings("L", extract_attachments=False, ack=settings))


def mail(sender: str, subject: str = "Consulta", name: str = "Cliente", extra: str = "") -> bytes:
    n = next(_uids)
    return (
        f"{extra}From: {name} <{sender}>\r\nTo: {OWN}\r\nSubject: {subject}\r\n"
        f"Message-ID: <a{n}@cliente.example>\r\nMIME-Version: 1.0\r\n"
        f"Content-Type: text/plain; charset=utf-8\r\n\r\nhola {n}\r\n"
    ).encode()


async def ingest(engine: CaseEngine, raw: bytes) -> str | None:
    return (await engine.ingest(MailKey("L", "IMAP/New", "1", str(next(_uids))), raw)).ack


def outbox(store: SqliteStore) -> list[tuple[str, str, str | None]]:
    return [
        (str(r[0]), str(r[1]), r[2])
        for r in db_rows(store.path, "SELECT recipient, state, last_error FROM outbox ORDER BY id")
    ]


async def test_plus_tagged_and_cased_variants_share_one_recipient_limit(store: SqliteStore) -> None:
    engine = acking(store, max_per_recipient_per_hour=3)
    senders = [
        "victim+1@x.example",
        "Victim+2@X.example",
        "victim@x.example",
        "VICTIM+zz@x.example",
    ]
    senders += [f"victim+{n}@x.example" for n in range(3, 10)]
    results = [await ingest(engine, mail(s, f"asunto {i}")) for i, s in enumerate(senders)]
    assert results[:3] == ["queued"] * 3
    assert all(r is not None and "rate limit of 3" in r for r in results[3:]), results
    assert len(outbox(store)) == 3
    other = await ingest(engine, mail("other+1@x.example"))  # another mailbox is not affected
    assert other == "queued"


async def test_a_flood_of_250_forged_senders_gets_at_most_200_acknowledgements(
    store: SqliteStore,
) -> None:
    engine = acking(store)  # MaxPerHour: the default, 200
    async with store.group():  # one commit: the test is about the limit, not fsyncs
        results = [await ingest(engine, mail(f"forged{n}@victims{n}.example")) for n in range(250)]
    assert results.count("queued") == 200
    suppressed = [r for r in results if r != "queued"]
    assert len(suppressed) == 50 and all(r and r.startswith("suppressed: ") for r in suppressed)
    assert db_rows(store.path, "SELECT count(*) FROM cases") == [(250,)]  # every mail has its case
    rows = outbox(store)
    assert [state for _, state, _ in rows] == ["pending"] * 200 + ["suppressed"] * 50
    assert all("MaxPerHour: 200" in (error or "") for _, state, error in rows[200:])
    shown = await admin.list_acks(store, ["suppressed"])
    assert len(shown) == 50 and all(r.last_error for r in shown)
    assert {r.state for r in await admin.list_acks(store)} == {"pending", "suppressed"}


async def test_suppressed_acknowledgements_are_never_sent_and_show_in_acks_and_cases(
    store: SqliteStore, smtp: SmtpTestServer
) -> None:
    engine = acking(store, max_per_hour=2)
    results = [await ingest(engine, mail(f"c{n}@ex{n}.example")) for n in range(4)]
    assert results[:2] == ["queued", "queued"]
    assert results[2:] == ["suppressed: MaxPerHour: 2 acknowledgements in the last hour"] * 2
    sender = OutboxSender(
        store,
        {"L": smtp.endpoint()},
        send_message,
        wake=asyncio.Event(),
        stop=asyncio.Event(),
        log=get_logger(),
    )
    assert await sender.deliver_due() == 2
    assert await sender.deliver_due() == 0  # suppressed rows are never taken
    assert sorted(m.rcpt_tos[0] for m in smtp.messages) == ["c0@ex0.example", "c1@ex1.example"]
    assert [s for _, s, _ in outbox(store)] == ["sent", "sent", "suppressed", "suppressed"]
    args = build_parser().parse_args(["acks", "--state", "suppressed"])
    assert args.state == ["suppressed"]
    cases = {c.case_number: c.ack for c in await store.list_cases()}
    assert cases["000003"] == "suppressed: MaxPerHour: 2 acknowledgements in the last hour"


async def test_values_from_the_mail_are_cut_and_lose_control_characters(
    store: SqliteStore,
) -> None:
    template = AckTemplate(
        subject="{case_token} Recibido: {subject}",
        text="Hola {customer_name}: recibimos «{subject}» de {sender}.",
        html="<p>{customer_name}: {subject}</p>",
    )
    engine = acking(store, template)
    name = "Evil\x1b]0;pwned\x07 \u202eNombre " + "N" * 3000
    subject = "Asunto \x1b[2J\x9b" + "S" * 3000
    encoded_name = Header(name, "utf-8").encode()
    encoded_subject = Header(subject, "utf-8").encode()
    assert (
        await ingest(engine, mail("ana@cliente.example", encoded_subject, encoded_name)) == "queued"
    )
    ((mime,),) = db_rows(store.path, "SELECT mime FROM outbox")
    ack = email.message_from_bytes(mime, policy=email.policy.default)
    sent_subject = str(ack["Subject"])
    shown = sent_subject.split("Recibido: ", 1)[1]
    assert len(shown) <= 100 and shown.startswith("Asunto") and shown.endswith("…")
    raw_to = email.message_from_bytes(mime, policy=email.policy.compat32)["To"]
    display = str(make_header(decode_header(raw_to))).rsplit(" <", 1)[0]
    assert len(display) <= 64 and display.startswith("Evil")
    greeting = re.search(r"Hola (.*?): recibimos", ack.get_body(("plain",)).get_content())  # type: ignore[union-attr]
    assert greeting and len(greeting.group(1)) <= 64
    parts = [p.get_content() for p in ack.walk() if p.get_content_maintype() == "text"]
    for text in [sent_subject, display, *parts]:
        assert not re.search("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]", text)
    plain = parts[0]
    assert "N" * 64 not in plain and "S" * 100 not in plain


def authres(value: str) -> str:
    return f"Authentication-Results: {value}\r\n"


@pytest.mark.parametrize(
    ("headers", "acknowledged"),
    [
        (authres(f"{MX}; spf=pass smtp.mailfrom=x; dmarc=pass header.from=x"), True),
        (authres("MX.Example.ORG 1; dkim=pass; DMARC=Pass (p=reject)"), True),
        (authres("other.example; dmarc=pass") + authres(f"{MX}; dmarc=pass"), True),
        ("", False),  # no header at all
        (authres("evil.example; dmarc=pass"), False),  # another server's word
        (authres(f"{MX}; dmarc=fail") + authres(f"{MX}; dmarc=pass"), False),  # forged below
        (authres(f'{MX}; spf=fail reason="x; dmarc=pass"'), False),  # inside a quoted string
        (authres(f"{MX}; spf=fail (dmarc=pass)"), False),  # inside a comment
        (authres(f"{MX} (; dmarc=pass); dmarc=none"), False),
        (authres("mx.example.org.evil; dmarc=pass"), False),
    ],
)
async def test_require_authenticated_acknowledges_only_our_servers_dmarc_pass(
    store: SqliteStore, headers: str, acknowledged: bool
) -> None:
    engine = acking(store, require_authenticated=MX)
    result = await ingest(engine, mail("ana@cliente.example", extra=headers))
    assert db_rows(store.path, "SELECT count(*) FROM cases") == [(1,)]  # the case, always
    if acknowledged:
        assert result == "queued"
    else:
        assert (
            result == f"skipped: not authenticated: no dmarc=pass from {MX} (RequireAuthenticated)"
        )
        assert outbox(store) == []


async def test_ack_statements_use_indexes(store: SqliteStore) -> None:
    """The limits' counts run for every mail: they must not scan the growing outbox."""
    engine = acking(store, max_per_hour=3)
    seen: list[str] = []
    raw = store._conn().raw
    raw.set_trace_callback(seen.append)
    for n in range(5):
        await ingest(engine, mail(f"x+{n}@y.example", f"s {n}"))
        await ingest(engine, mail(f"z{n}@y.example", f"t {n}"))
    raw.set_trace_callback(None)
    counts = [sql for sql in seen if "FROM outbox" in sql and sql.lstrip().startswith("SELECT")]
    assert len(counts) >= 10
    for sql in counts:
        plan = " | ".join(row[3] for row in raw.execute(f"EXPLAIN QUERY PLAN {sql}"))
        assert "SCAN outbox" not in plan, (sql, plan)
