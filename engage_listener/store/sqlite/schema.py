"""SQLite schema, versioned with PRAGMA user_version and applied as ordered migrations."""

from __future__ import annotations

# Migration 6: the key of a row written under the old (folder, uidvalidity, uid).
_POP3 = "(substr(folder, 1, 6) = '#pop3:' AND uidvalidity = 0)"
_MAILBOX = f"CASE WHEN {_POP3} THEN '' ELSE folder END"
_EPOCH = (
    f"CASE WHEN {_POP3} THEN CAST(uid AS TEXT) WHEN uidvalidity = 0 THEN ''"
    " ELSE CAST(uidvalidity AS TEXT) END"
)
_ITEM = f"CASE WHEN {_POP3} THEN substr(folder, 7) ELSE CAST(uid AS TEXT) END"

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
        case_id INTEGER REFERENCES cases(id),  -- NULL: automatic mail stored and ignored
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
        ignored INTEGER NOT NULL DEFAULT 0,
        acknowledge INTEGER,  -- the routing hook's say on acknowledging: NULL, 0 or 1
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
        message_row INTEGER REFERENCES messages(id),  -- NULL when quarantined
        quarantine_id INTEGER REFERENCES quarantine(id),
        message_id TEXT,
        sha256 TEXT NOT NULL,
        state TEXT NOT NULL,  -- committed, moved, deleted, quarantined
        created_at TEXT NOT NULL,
        done_at TEXT,
        PRIMARY KEY (listener, folder, uidvalidity, uid)
    );
    CREATE INDEX ledger_hash ON ledger(listener, sha256);
    CREATE INDEX cases_open ON cases(customer_id, process, normalized_subject)
        WHERE status = 'open';
    CREATE TABLE case_tags (
        case_id INTEGER NOT NULL REFERENCES cases(id),
        tag TEXT NOT NULL,
        PRIMARY KEY (case_id, tag)
    );
    CREATE TABLE customers (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL,
        external_id TEXT UNIQUE,
        source TEXT NOT NULL DEFAULT 'import',  -- import, auto (unknown sender)
        created_at TEXT NOT NULL
    );
    CREATE TABLE customer_addresses (
        address TEXT PRIMARY KEY,  -- lower-cased
        customer_id INTEGER NOT NULL REFERENCES customers(id) ON DELETE CASCADE
    );
    CREATE INDEX customer_addresses_customer ON customer_addresses(customer_id);
    -- Failed attempts at a mail still in the input folder, until MaxAttempts.
    CREATE TABLE attempts (
        listener TEXT NOT NULL,
        folder TEXT NOT NULL,
        uidvalidity INTEGER NOT NULL,
        uid INTEGER NOT NULL,
        attempts INTEGER NOT NULL,
        last_error TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        PRIMARY KEY (listener, folder, uidvalidity, uid)
    );
    CREATE TABLE quarantine (
        id INTEGER PRIMARY KEY,
        listener TEXT NOT NULL,
        folder TEXT NOT NULL,
        uidvalidity INTEGER NOT NULL,
        uid INTEGER NOT NULL,
        message_id TEXT,
        sender TEXT NOT NULL DEFAULT '',
        subject TEXT NOT NULL DEFAULT '',
        sha256 TEXT NOT NULL,
        reason TEXT NOT NULL,
        attempts INTEGER NOT NULL,
        state TEXT NOT NULL DEFAULT 'held',  -- held, replayed
        case_id INTEGER REFERENCES cases(id),  -- set by a successful replay
        created_at TEXT NOT NULL,
        replayed_at TEXT,
        raw BLOB NOT NULL
    );
    """,
    # 2: acknowledgements, written with the case and delivered after commit.
    """
    CREATE TABLE outbox (
        id INTEGER PRIMARY KEY,
        listener TEXT NOT NULL,
        case_id INTEGER NOT NULL REFERENCES cases(id),
        message_row INTEGER NOT NULL REFERENCES messages(id),
        recipient TEXT NOT NULL,  -- lower-cased
        subject TEXT NOT NULL,
        smtp_message_id TEXT NOT NULL,  -- our Message-ID, recorded before sending
        mime BLOB NOT NULL,
        state TEXT NOT NULL,  -- pending, sending, sent, failed, uncertain, closed
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at REAL NOT NULL DEFAULT 0,
        last_error TEXT,
        smtp_reply TEXT,
        created_at TEXT NOT NULL,
        sent_at TEXT
    );
    CREATE INDEX outbox_due ON outbox(state, next_attempt_at);
    CREATE INDEX outbox_recipient ON outbox(recipient, created_at);
    """,
    # 3: operator control (pauses, resets) and heartbeats for `status`.
    """
    CREATE TABLE listener_control (
        listener TEXT PRIMARY KEY,
        paused_until TEXT,  -- ISO time (aware); intake waits until then
        reset_from TEXT,  -- ISO time (aware); re-examine mail received since then
        updated_at TEXT NOT NULL
    );
    CREATE TABLE heartbeats (
        listener TEXT PRIMARY KEY,
        state TEXT NOT NULL,
        pid INTEGER NOT NULL,
        last_batch_at TEXT,
        last_success_at TEXT,
        last_error TEXT,
        backlog INTEGER,
        oldest_unprocessed TEXT,
        paused_until TEXT,
        updated_at TEXT NOT NULL
    );
    CREATE INDEX ledger_created ON ledger(listener, created_at);
    """,
    # 4: the open case of a customer by subject, whatever its open status. cases_open
    # covered status 'open' only, so since RequireApproval the lookup made for every mail
    # read the whole cases table (a 10,000-mail backlog spent 15% of its time there).
    """
    DROP INDEX IF EXISTS cases_open;
    CREATE INDEX cases_by_subject ON cases(customer_id, normalized_subject);
    """,
    # 5: a mail that referred to a case it may not join (FollowUpsFrom Participants) opens
    # a new case that records the one it named.
    # Only a case's participants (the customer's addresses and every From/To/Cc of its
    # mails, kept in case_participants) may join it by token or header: case numbers are
    # easy to guess. Older mails' senders are carried over; their To/Cc were not stored.
    # Acknowledgement limits: per recipient without its +tag (recipient_key), per listener
    # and hour; `suppressed` rows record the ones the limit held back. ExtractAttachments
    # False: the .eml attachment row points at its message's raw (raw_of_message) instead
    # of holding a second copy; attachment_files gives every attachment's bytes.
    """
    ALTER TABLE cases ADD COLUMN related_case_id INTEGER REFERENCES cases(id);
    CREATE TABLE case_participants (
        case_id INTEGER NOT NULL REFERENCES cases(id),
        address TEXT NOT NULL,  -- lower-cased
        PRIMARY KEY (case_id, address)
    ) WITHOUT ROWID;
    INSERT OR IGNORE INTO case_participants (case_id, address)
        SELECT case_id, lower(sender) FROM messages WHERE case_id IS NOT NULL AND sender != '';
    ALTER TABLE outbox ADD COLUMN recipient_key TEXT;
    UPDATE outbox SET recipient_key = CASE
        WHEN instr(recipient, '+') > 0 AND instr(recipient, '+') < instr(recipient, '@')
        THEN substr(recipient, 1, instr(recipient, '+') - 1)
            || substr(recipient, instr(recipient, '@'))
        ELSE recipient END;
    CREATE INDEX outbox_recipient_key ON outbox(recipient_key, created_at, state);
    CREATE INDEX outbox_listener ON outbox(listener, created_at, state);
    ALTER TABLE attachments ADD COLUMN raw_of_message INTEGER NOT NULL DEFAULT 0;
    CREATE VIEW attachment_files AS
        SELECT a.id, a.message_row, a.filename, a.content_type, a.size, a.content_id, a.inline,
            CASE WHEN a.raw_of_message THEN m.raw ELSE a.content END AS content
        FROM attachments a JOIN messages m ON m.id = a.message_row;
    """,
    # 6: one source-neutral mail key (listener, mailbox, epoch, item), all text, instead of
    # IMAP's (folder, uidvalidity, uid) that POP3 borrowed as ("#pop3:" + UIDL, 0,
    # generation): POP3 rows become ("", generation, UIDL), quarantine replays
    # ("#quarantine", "", entry id), IMAP rows (folder, UIDVALIDITY, UID). The ledger's
    # key puts the item before the epoch: POP3 looks a UIDL up in every epoch.
    # heartbeats.last_batch_at, never written, goes.
    f"""
    CREATE TABLE ledger_new (
        listener TEXT NOT NULL,
        mailbox TEXT NOT NULL,
        epoch TEXT NOT NULL,
        item TEXT NOT NULL,
        message_row INTEGER REFERENCES messages(id),  -- NULL when quarantined
        quarantine_id INTEGER REFERENCES quarantine(id),
        message_id TEXT,
        sha256 TEXT NOT NULL,
        state TEXT NOT NULL,  -- committed, moved, deleted, quarantined
        created_at TEXT NOT NULL,
        done_at TEXT,
        PRIMARY KEY (listener, mailbox, item, epoch)
    );
    INSERT INTO ledger_new SELECT listener, {_MAILBOX}, {_EPOCH}, {_ITEM}, message_row,
        quarantine_id, message_id, sha256, state, created_at, done_at FROM ledger;
    DROP TABLE ledger;
    ALTER TABLE ledger_new RENAME TO ledger;
    CREATE INDEX ledger_hash ON ledger(listener, sha256);
    CREATE INDEX ledger_created ON ledger(listener, created_at);
    CREATE TABLE attempts_new (
        listener TEXT NOT NULL,
        mailbox TEXT NOT NULL,
        epoch TEXT NOT NULL,
        item TEXT NOT NULL,
        attempts INTEGER NOT NULL,
        last_error TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        PRIMARY KEY (listener, mailbox, item, epoch)
    );
    INSERT INTO attempts_new SELECT listener, {_MAILBOX}, {_EPOCH}, {_ITEM}, attempts,
        last_error, updated_at FROM attempts;
    DROP TABLE attempts;
    ALTER TABLE attempts_new RENAME TO attempts;
    ALTER TABLE quarantine ADD COLUMN mailbox TEXT NOT NULL DEFAULT '';
    ALTER TABLE quarantine ADD COLUMN epoch TEXT NOT NULL DEFAULT '';
    ALTER TABLE quarantine ADD COLUMN item TEXT NOT NULL DEFAULT '';
    UPDATE quarantine SET mailbox = {_MAILBOX}, epoch = {_EPOCH}, item = {_ITEM};
    ALTER TABLE quarantine DROP COLUMN folder;
    ALTER TABLE quarantine DROP COLUMN uidvalidity;
    ALTER TABLE quarantine DROP COLUMN uid;
    ALTER TABLE heartbeats DROP COLUMN last_batch_at;
    """,  # noqa: S608 - fixed text
    # 7: the new text of each mail (issue 18): what the customer wrote, without the quoted
    # history and signature (mail.reply.new_text), written with the mail. NULL for mails
    # stored before (their whole text is still body_text).
    """
    ALTER TABLE messages ADD COLUMN new_text TEXT;
    """,
    # 8: closing and reopening cases (issue 18): when a case was closed and why, and when
    # it was last reopened. Cases closed before (by hand-written SQL) take their last
    # change as their close time. related_case_id is looked up both ways by `cases show`.
    """
    ALTER TABLE cases ADD COLUMN closed_at TEXT;
    ALTER TABLE cases ADD COLUMN close_reason TEXT;
    ALTER TABLE cases ADD COLUMN reopened_at TEXT;
    UPDATE cases SET closed_at = updated_at WHERE status = 'closed';
    CREATE INDEX cases_related ON cases(related_case_id);
    CREATE INDEX cases_updated ON cases(updated_at);
    """,
    # 9: case events for the CRM (issue 18 point 7), written in the case's transaction and
    # POSTed after commit by outbox.webhooks. `body` is the JSON sent every attempt;
    # `event_id` is the receiver's key to drop repeats. Delivery is in order per case: an
    # event waits while an earlier one of its case is pending or failed (webhooks_case).
    """
    CREATE TABLE webhook_events (
        id INTEGER PRIMARY KEY,
        event_id TEXT NOT NULL UNIQUE,
        listener TEXT NOT NULL,
        case_id INTEGER NOT NULL REFERENCES cases(id),
        message_row INTEGER REFERENCES messages(id),
        event TEXT NOT NULL,  -- case-opened, message-added, case-closed, case-reopened
        body BLOB NOT NULL,
        state TEXT NOT NULL,  -- pending, delivered, failed, closed
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at REAL NOT NULL DEFAULT 0,
        last_error TEXT,
        response TEXT,
        created_at TEXT NOT NULL,
        delivered_at TEXT
    );
    CREATE INDEX webhooks_due ON webhook_events(state, next_attempt_at);
    CREATE INDEX webhooks_case ON webhook_events(case_id, state, id);
    """,
)
