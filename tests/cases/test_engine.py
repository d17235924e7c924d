"""The case engine on a real SQLite store: customers, threading, automatic mail, attachments."""

from __future__ import annotations

import itertools
import random
from email.message import EmailMessage
from pathlib import Path

import pytest

from engage_listener.cases.engine import CaseEngine, EngineSettings
from engage_listener.errors import QuarantineNow
from engage_listener.ops import admin
from engage_listener.store.sqlite.store import SqliteStore
from engage_listener.store.sqlite.transaction import BLOB_PIECE
from tests.support.engine import engine, key
from tests.support.helpers import db_rows

_uids = itertools.count(1)


def mail(subject: str, sender: str = "ana@example.com", **headers: str) -> bytes:
    msg = EmailMessage()
    msg["From"] = f"Ana Pérez <{sender}>"
    msg["To"] = "soporte@example.org"
    msg["Subject"] = subject
    msg["Message-ID"] = f"<{next(_uids)}.{subject.encode().hex()[:20]}@example.com>"
    for name, value in headers.items():
        msg[name.replace("_", "-")] = value
    msg.set_content("Buenos días,\nla factura 123 está mal.\n")
    return msg.as_bytes()


async def test_unknown_sender_creates_a_customer_then_is_known(store: SqliteStore) -> None:
    e = engine(store)
    await e.ingest(key(), mail("Factura incorrecta", "Ana@Example.com"))
    await e.ingest(key(), mail("Otra cosa", "ana@example.COM"))
    customers = await admin.list_customers(store)
    assert [(c.name, c.addresses) for c in customers] == [("Ana Pérez", ("ana@example.com",))]


async def test_default_customer_and_quarantine_policies(store: SqliteStore, tmp_path: Path) -> None:
    csv = tmp_path / "c.csv"
    csv.write_text("name,addresses,external_id\nMostrador,mostrador@example.org,D1\n")
    await admin.import_customers(store, csv)
    (default,) = await admin.list_customers(store)
    e = engine(store, unknown_sender="DefaultCustomer", default_customer_id=default.id)
    await e.ingest(key(), mail("Hola", "nuevo@example.net"))
    assert db_rows(store.path, "SELECT customer_id FROM cases") == [(default.id,)]
    with pytest.raises(QuarantineNow, match=r"unknown sender nuevo2@example\.net"):
        await engine(store, unknown_sender="Quarantine").ingest(
            key(), mail("x", "nuevo2@example.net")
        )
    assert db_rows(store.path, "SELECT count(*) FROM cases") == [(1,)]  # rolled back


async def test_customers_import_updates_and_reports_bad_rows(
    store: SqliteStore, tmp_path: Path
) -> None:
    csv = tmp_path / "c.csv"
    csv.write_text(
        "name;addresses;external_id\n"
        'ACME S.A.;"compras@acme.example, ventas@ACME.example";A1\n'
        "Bad;not-an-address;B1\n"
        "ACME Sociedad;compras@acme.example;A1\n"
    )
    result = await admin.import_customers(store, csv)
    assert (result.created, result.updated) == (1, 1)
    assert len(result.problems) == 1 and ":3:" in result.problems[0]
    (acme,) = await admin.list_customers(store)
    assert acme.name == "ACME Sociedad"
    assert acme.addresses == ("compras@acme.example", "ventas@acme.example")


async def test_threading_by_references_token_and_subject(store: SqliteStore) -> None:
    e = engine(store, process="Reclamos", follow_ups_from="Anyone")  # strangers join
    first_raw = mail("Reclamo por cobro doble")
    first = await e.ingest(key(), first_raw)
    assert first.new_case
    first_id = first_raw.split(b"Message-ID: <")[1].split(b">")[0].decode()
    by_header = await e.ingest(
        key(), mail("algo distinto", "otro@example.net", In_Reply_To=f"<{first_id}>")
    )
    by_token = await e.ingest(
        key(), mail(f"Consulta [Case#{first.case_number}]", "tercero@example.net")
    )
    by_subject = await e.ingest(key(), mail("RE: RV: Reclamo  por cobro DOBLE"))
    other_process = await engine(store, process="Consultas").ingest(
        key(), mail("Reclamo por cobro doble")
    )
    assert {by_header.case_id, by_token.case_id, by_subject.case_id} == {first.case_id}
    assert not by_subject.new_case
    assert other_process.new_case and other_process.case_id != first.case_id


async def test_closed_cases_are_not_continued(store: SqliteStore) -> None:
    e = engine(store)
    first = await e.ingest(key(), mail("Pedido 77"))
    async with store.transaction() as tx:
        await tx.execute("UPDATE cases SET status = 'closed' WHERE id = ?", (first.case_id,))
    again = await e.ingest(key(), mail("Re: Pedido 77"))
    assert again.new_case and again.case_id != first.case_id


async def test_extra_subject_prefixes_from_config(store: SqliteStore) -> None:
    e = engine(store, subject_prefixes=("SVAR",))
    first = await e.ingest(key(), mail("Entrega"))
    assert (await e.ingest(key(), mail("SVAR: Entrega"))).case_id == first.case_id


async def test_automatic_mail_never_opens_a_case_but_joins_one(store: SqliteStore) -> None:
    e = engine(store)
    ooo = await e.ingest(key(), mail("Fuera de la oficina", Auto_Submitted="auto-replied"))
    assert ooo.ignored and ooo.case_id is None
    first = await e.ingest(key(), mail("Garantía"))
    joined = await e.ingest(key(), mail("RE: Garantía", Auto_Submitted="auto-replied"))
    assert joined.case_id == first.case_id
    assert db_rows(store.path, "SELECT ignored, automatic FROM messages WHERE case_id IS NULL") == [
        (1, "auto-submitted: auto-replied")
    ]
    opened = await engine(store, automatic_mail="OpenCase").ingest(
        key(), mail("Aviso", Precedence="bulk")
    )
    assert opened.new_case


def _with_attachments() -> bytes:
    msg = EmailMessage()
    msg["From"] = "ana@example.com"
    msg["Subject"] = "Adjunto factura"
    msg["Message-ID"] = f"<att{next(_uids)}@example.com>"
    msg.set_content("ver adjunto")
    msg.add_alternative("<p>ver adjunto <img src='cid:logo@x'></p>", subtype="html")
    msg.get_payload()[1].add_related(b"\x89PNG fake", "image", "png", cid="<logo@x>")
    msg.add_attachment(
        b"%PDF-1.4 factura", maintype="application", subtype="pdf", filename="../../factura.pdf"
    )
    msg.add_attachment(b"a,b\n1,2\n", maintype="text", subtype="csv", filename="datos.csv")
    return msg.as_bytes()


async def test_extract_attachments_true_one_row_each_and_body_without_them(
    store: SqliteStore,
) -> None:
    raw = _with_attachments()
    await CaseEngine(store, EngineSettings("L", extract_attachments=True)).ingest(key(), raw)
    rows = db_rows(
        store.path, "SELECT filename, content_type, inline, content FROM attachments ORDER BY id"
    )
    names = [r[0] for r in rows]
    assert "factura.pdf" in names and "datos.csv" in names
    assert all("/" not in n and ".." not in n for n in names)
    assert any(r[2] == 1 and r[1] == "image/png" for r in rows)  # the inline image is kept
    assert next(r[3] for r in rows if r[0] == "factura.pdf") == b"%PDF-1.4 factura"
    ((stored, full),) = db_rows(store.path, "SELECT stored_mime, raw FROM messages")
    assert full == raw
    assert b"JVBERi0xLjQgZmFjdHVyYQ" not in stored  # the PDF's base64 is gone
    assert b"ver adjunto" in stored


@pytest.mark.parametrize("extract", [True, False])
async def test_big_blobs_are_stored_byte_for_byte(store: SqliteStore, extract: bool) -> None:
    """Blobs over BLOB_PIECE are written piece by piece (not bound whole)."""
    big = random.Random(7).randbytes(3 * BLOB_PIECE + 12345)
    msg = EmailMessage()
    msg["From"], msg["Subject"], msg["Message-ID"] = "ana@example.com", "Grande", "<big@x>"
    msg.set_content("ver adjunto")
    msg.add_attachment(big, maintype="application", subtype="zip", filename="datos.zip")
    raw = msg.as_bytes()
    assert len(raw) > 4 * BLOB_PIECE
    await CaseEngine(store, EngineSettings("L", extract_attachments=extract)).ingest(key(), raw)
    ((stored_raw, size),) = db_rows(store.path, "SELECT raw, size FROM messages")
    assert (stored_raw, size) == (raw, len(raw))
    content = db_rows(store.path, "SELECT content FROM attachments")
    assert content == [(big,)] if extract else [(raw,)]


async def test_extract_attachments_false_stores_the_whole_mail_once(store: SqliteStore) -> None:
    raw = _with_attachments()
    await engine(store).ingest(key(), raw)
    assert db_rows(store.path, "SELECT filename, content_type, content FROM attachment_files") == [
        ("Adjunto factura.eml", "message/rfc822", raw)
    ]
