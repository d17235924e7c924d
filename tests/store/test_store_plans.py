"""Every statement the engine runs for a mail finds its rows through an index: a full
scan of a growing table would make each mail slower than the last."""

from __future__ import annotations

import re

import pytest

from engage_listener.cases.engine import CaseEngine, EngineSettings
from engage_listener.cases.hooks import load_hook
from engage_listener.store.interface import MailKey
from engage_listener.store.sqlite.store import SqliteStore
from tests.support.helpers import make_mail
from tests.support.paths import REPO


@pytest.fixture
def store(sqlite_store: SqliteStore) -> SqliteStore:
    """The SQLite store only: these tests read its file and its query plans."""
    return sqlite_store


# The store's own tables; a routing procedure may scan its own small tables.
TABLES = (
    "cases",
    "messages",
    "attachments",
    "ledger",
    "customers",
    "customer_addresses",
    "attempts",
    "quarantine",
    "outbox",
    "case_tags",
)


async def test_per_mail_statements_use_indexes(store: SqliteStore) -> None:
    hook = load_hook(f"sql:{REPO / 'examples/routing/pa_sys_msg_in.sql'}", REPO, 10)
    engine = CaseEngine(store, EngineSettings("L", extract_attachments=True, hook=hook))
    seen: list[str] = []
    raw = store._conn().raw
    raw.set_trace_callback(seen.append)
    first = make_mail(1, sender="ana@example.com", subject="Factura", message_id="<a@x>")
    mails = [
        first,
        first,  # the same mail again: a duplicate
        make_mail(2, sender="ana@example.com", subject="RE: Factura"),  # by subject
        make_mail(3, sender="bob@example.com").replace(  # by In-Reply-To / References
            b"MIME-Version", b"In-Reply-To: <a@x>\r\nReferences: <a@x>\r\nMIME-Version"
        ),
        make_mail(4, sender="carla@example.com", subject="Consulta [C-000001]"),  # by number
    ]
    for uid, mail in enumerate(mails, start=1):
        await engine.ingest(MailKey("L", "IMAP/New", "1", str(uid)), mail)
    await store.mark_done([MailKey("L", "IMAP/New", "1", str(uid)) for uid in range(1, 6)], "moved")
    raw.set_trace_callback(None)
    scans = {}
    for sql in seen:
        if not re.match(r"\s*(SELECT|UPDATE|DELETE|WITH)\b", sql, re.IGNORECASE):
            continue
        plan = " | ".join(row[3] for row in raw.execute(f"EXPLAIN QUERY PLAN {sql}"))
        for table in TABLES:
            if re.search(rf"\bSCAN {table}\b", plan):
                scans[sql[:120]] = plan
    assert len(seen) > 40  # the trace saw the work
    assert not scans, scans
