"""ExtractAttachments True: a mail with nothing to remove is stored once (`raw`), its
stored body NULL; one with attachments keeps the body without them beside the raw mail.
Either way `coalesce(stored_mime, raw)` is the stored body."""

from __future__ import annotations

from email.message import EmailMessage

from engage_listener.cases.engine import CaseEngine, EngineSettings
from engage_listener.store.sqlite.store import SqliteStore
from tests.support.engine import key
from tests.support.helpers import db_rows, make_mail


def with_pdf() -> bytes:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "ana@example.com", "s@example.org", "factura"
    msg["Message-ID"] = "<pdf-once@example.com>"
    msg.set_content("ver adjunto")
    msg.add_attachment(b"%PDF-1.4 " * 500, maintype="application", subtype="pdf",
                       filename="f.pdf")  # fmt: skip
    return msg.as_bytes()


async def test_a_mail_without_attachments_is_written_once(store: SqliteStore) -> None:
    plain, attached = make_mail(1), with_pdf()
    engine = CaseEngine(store, EngineSettings("L", extract_attachments=True))
    for raw in (plain, attached):
        await engine.ingest(key(), raw)
    rows = db_rows(
        store.path,
        "SELECT raw, stored_mime, coalesce(stored_mime, raw), length(raw) + "
        "coalesce(length(stored_mime), 0) FROM messages ORDER BY id",
    )
    (raw1, stored1, body1, bytes1), (raw2, stored2, body2, bytes2) = rows
    assert raw1 == plain and stored1 is None and body1 == plain and bytes1 == len(plain)
    assert raw2 == attached and stored2 is not None and body2 == stored2
    assert b"JVBERi0xLjQg" not in stored2 and b"ver adjunto" in stored2
    assert bytes2 == len(attached) + len(stored2)
