"""Issue 14.9: with ExtractAttachments False the whole mail is its one `.eml` attachment;
its bytes are in the store once (the message's raw), yet listed and readable as before."""

from __future__ import annotations

import random
from email.message import EmailMessage

import pytest

from engage_listener.cases.engine import CaseEngine, EngineSettings
from engage_listener.store.interface import MailKey
from engage_listener.store.sqlite.store import SqliteStore
from engage_listener.store.sqlite.transaction import BLOB_PIECE
from tests.support.helpers import db_rows


@pytest.fixture
def store(sqlite_store: SqliteStore) -> SqliteStore:
    """The SQLite store only: these tests read its file and its query plans."""
    return sqlite_store


BLOBS = (
    "SELECT (SELECT coalesce(sum(length(raw)), 0) + coalesce(sum(length(stored_mime)), 0)"
    " FROM messages) + (SELECT coalesce(sum(length(content)), 0) FROM attachments)"
)


def _mail(size: int) -> bytes:
    msg = EmailMessage()
    msg["From"], msg["To"] = "ana@example.com", "soporte@example.org"
    msg["Subject"], msg["Message-ID"] = "Planos de la obra", f"<eml{size}@example.com>"
    msg.set_content("van los planos")
    data = random.Random(size).randbytes(size)
    msg.add_attachment(data, maintype="application", subtype="pdf", filename="planos.pdf")
    return msg.as_bytes()


async def test_extract_attachments_false_keeps_the_mail_bytes_once(store: SqliteStore) -> None:
    engine = CaseEngine(store, EngineSettings("L", extract_attachments=False))
    mails = [_mail(2000), _mail(3 * BLOB_PIECE)]  # a small one and one written in pieces
    for uid, raw in enumerate(mails, start=1):
        await engine.ingest(MailKey("L", "IMAP/New", "1", str(uid)), raw)
    assert db_rows(store.path, BLOBS) == [(sum(len(raw) for raw in mails),)]
    listed = db_rows(
        store.path,
        "SELECT filename, content_type, size, content FROM attachment_files ORDER BY id",
    )
    assert listed == [("Planos de la obra.eml", "message/rfc822", len(raw), raw) for raw in mails]
    cases = await store.list_cases()
    assert [(c.messages, c.attachments) for c in cases] == [(2, 2)]  # one case by subject


async def test_extract_attachments_true_still_stores_each_attachment(store: SqliteStore) -> None:
    engine = CaseEngine(store, EngineSettings("L", extract_attachments=True))
    raw = _mail(5000)
    await engine.ingest(MailKey("L", "IMAP/New", "1", "1"), raw)
    ((name, content),) = db_rows(store.path, "SELECT filename, content FROM attachment_files")
    assert name == "planos.pdf" and content == random.Random(5000).randbytes(5000)
    assert db_rows(store.path, "SELECT raw_of_message FROM attachments") == [(0,)]
