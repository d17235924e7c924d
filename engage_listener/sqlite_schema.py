"""SQLite schema, versioned with PRAGMA user_version and applied as ordered migrations."""

from __future__ import annotations

MIGRATIONS: tuple[str, ...] = (
    # 1: cases, messages, attachments and the exactly-once ledger.
    """
    CREATE TABLE cases (
        id INTEGER PRIMARY KEY,
        case_number TEXT NOT NULL UNIQUE,
        listener TEXT NOT NULL,
        process TEXT,
        customer_id INTEGER,
        sender TEXT NOT NULL,
        sender_name TEXT NOT NULL DEFAULT '',
        subject TEXT NOT NULL,
        normalized_subject TEXT NOT NULL DEFAULT '',
        status TEXT NOT NULL DEFAULT 'open',
        inbox TEXT,
        priority INTEGER,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL
    );
    CREATE TABLE messages (
        id INTEGER PRIMARY KEY,
        case_id INTEGER NOT NULL REFERENCES cases(id),
        listener TEXT NOT NULL,
        message_id TEXT,
        in_reply_to TEXT,
        sender TEXT NOT NULL,
        sender_name TEXT NOT NULL DEFAULT '',
        subject TEXT NOT NULL,
        sent_at TEXT,
        received_at TEXT NOT NULL,
        sha256 TEXT NOT NULL,
        size INTEGER NOT NULL,
        parsed INTEGER NOT NULL,
        automatic TEXT,
        body_text TEXT NOT NULL DEFAULT '',
        body_html TEXT,
        defects TEXT NOT NULL DEFAULT '',
        stored_mime BLOB,
        raw BLOB NOT NULL
    );
    CREATE INDEX messages_case ON messages(case_id);
    CREATE INDEX messages_message_id ON messages(message_id);
    CREATE TABLE attachments (
        id INTEGER PRIMARY KEY,
        message_row INTEGER NOT NULL REFERENCES messages(id),
        filename TEXT NOT NULL,
        content_type TEXT NOT NULL,
        size INTEGER NOT NULL,
        content_id TEXT,
        inline INTEGER NOT NULL DEFAULT 0,
        content BLOB NOT NULL
    );
    CREATE INDEX attachments_message ON attachments(message_row);
    CREATE TABLE ledger (
        listener TEXT NOT NULL,
        folder TEXT NOT NULL,
        uidvalidity INTEGER NOT NULL,
        uid INTEGER NOT NULL,
        message_row INTEGER NOT NULL REFERENCES messages(id),
        message_id TEXT,
        sha256 TEXT NOT NULL,
        state TEXT NOT NULL,
        created_at TEXT NOT NULL,
        done_at TEXT,
        PRIMARY KEY (listener, folder, uidvalidity, uid)
    );
    CREATE INDEX ledger_hash ON ledger(listener, sha256);
    """,
)
