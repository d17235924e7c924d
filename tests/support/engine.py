"""The case engine on its own, for tests that feed it mails without a mail server."""

from __future__ import annotations

import itertools

from engage_listener.cases.engine import CaseEngine, EngineSettings
from engage_listener.store.interface import MailKey
from engage_listener.store.sqlite.store import SqliteStore

_uids = itertools.count(1)


def key() -> MailKey:
    """A mail key nobody used yet (listener "L", IMAP/New, UIDVALIDITY 1)."""
    return MailKey("L", "IMAP/New", "1", str(next(_uids)))


def engine(store: SqliteStore, **settings: object) -> CaseEngine:
    """An engine for listener "L" (attachments not extracted) with `settings` changed."""
    return CaseEngine(store, EngineSettings(listener="L", extract_attachments=False, **settings))  # type: ignore[arg-type]


# Routing hooks that run long for the mail with subject "lento" (and at once for the rest):
# the one way to make a hook time out inside a chunk of mails.
SLOW = "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {limit})"
LIMIT = "CASE WHEN :subject = 'lento' THEN 1000000000 ELSE 1 END"
HOOKS = {
    # an interrupted SELECT: SQLite keeps the transaction, the savepoint is undone
    "select": (
        "UPDATE cases SET inbox = 'General' WHERE id = :case_id;\n"
        f"{SLOW.format(limit=LIMIT)} SELECT count(*) FROM n;\n"
    ),
    # an interrupted UPDATE: SQLite rolls back the whole transaction, so the group is
    # lost and the chunk is done again mail by mail
    "update": (
        f"UPDATE cases SET inbox = 'General' || (\n  {SLOW.format(limit=LIMIT)}"
        " SELECT substr(count(*), 1, 0) FROM n\n) WHERE id = :case_id;\n"
    ),
}
