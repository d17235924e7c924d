"""The benchmark's further cases (issue 19), used by bench/ingest.py:

* `mbsync_config`: isync's mbsync copying the same freshly seeded folder into a local
  Maildir, with its defaults but two: `Create Near` (the Maildir folder is made) and
  `SyncState` in a directory of its own (by default it lives in the near folder, which
  does not exist yet: "near side box New cannot be opened"), as the native reference
  beside the imaplib baseline;
* `many_config`: one daemon with many IMAP listeners (one mailbox each);
* `grow_store`: a store of a real run's rows copied until it holds 100,000 mails, to
  measure the cost per mail as the store grows.

Stdlib only.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterable
from pathlib import Path

OFFSET = 10_000_000  # row ids of copy k start at k * OFFSET


def mbsync_config(
    work: Path, *, host: str, port: int, user: str, password: str, ca_file: Path, folder: str
) -> Path:
    """An mbsync configuration: the far folder `folder` to the Maildir `work`/maildir/New."""
    maildir, state = work / "maildir", work / "state"
    maildir.mkdir()
    state.mkdir()
    if host == "127.0.0.1":  # mbsync matches the certificate's DNS names only
        host = "localhost"
    text = f"""IMAPAccount far
Host {host}
Port {port}
User {user}
Pass {password}
SSLType STARTTLS
CertificateFile {ca_file}

IMAPStore remote
Account far

MaildirStore local
Path {maildir}/
Inbox {maildir}/INBOX

Channel bench
Far :remote:"{folder}"
Near :local:New
Create Near
SyncState {state}/
"""
    path = work / "mbsyncrc"
    path.write_text(text)
    path.chmod(0o600)
    return path


def maildir_count(work: Path) -> int:
    """Mails mbsync wrote into the Maildir."""
    box = work / "maildir" / "New"
    return sum(1 for sub in ("new", "cur") if (box / sub).is_dir() for _ in (box / sub).iterdir())


def maildir_seed(folder: Path, raws: Iterable[bytes]) -> int:
    """Write mails straight into a Maildir folder's new/ (Dovecot made the folder), owned
    like the folder; names sort in the mails' order, which Dovecot's UIDs then follow."""
    owner = folder.stat()
    count = 0
    for count, raw in enumerate(raws, start=1):
        name = f"{1_000_000_000 + count}.M{count}P1.bench"
        tmp = folder / "tmp" / name
        tmp.write_bytes(raw.replace(b"\r\n", b"\n"))  # Maildir keeps LF, as Dovecot does
        os.chown(tmp, owner.st_uid, owner.st_gid)
        tmp.rename(folder / "new" / name)
    return count


def many_config(path: Path, listeners: list[str], elements: dict[str, str]) -> Path:
    """A configuration with one ImapListener per user in `listeners`, all else alike."""
    blocks = []
    for number, user in enumerate(listeners):
        values = {**elements, "UserName": user}
        body = "".join(f"    <{k}>{v}</{k}>\n" for k, v in values.items())
        blocks.append(f'  <ImapListener ID="Bench{number:02d}">\n{body}  </ImapListener>\n')
    path.write_text(
        '<?xml version="1.0" encoding="utf-8"?>\n<EngageIntegrationService>\n'
        + "".join(blocks)
        + '  <Process ID="EIS"><UseImapListener>True</UseImapListener></Process>\n'
        "  <Store><Path>store.sqlite3</Path></Store>\n</EngageIntegrationService>\n"
    )
    return path


def _copy(db: sqlite3.Connection, table: str, k: int, overrides: dict[str, str]) -> None:
    columns = [row[1] for row in db.execute(f"PRAGMA table_info({table})")]
    select = ", ".join(overrides.get(c, c).replace("{k}", str(k)) for c in columns)
    db.execute(f"INSERT INTO {table} ({', '.join(columns)}) SELECT {select} FROM {table}_seed")


def grow_store(path: Path, copies: int) -> int:
    """Add `copies` copies of the store's cases, messages, participants, tags and ledger
    rows (each with its own ids, case numbers, subjects, Message-IDs, hashes and ledger
    items, so that no lookup of a new mail finds more matches than before, and every
    index grows). The copies' bodies are cut to 300 characters and their raw mail to one
    byte, attachments are not copied: 100,000 real mails would be ~15 GB, and a new mail's
    lookups read indexes and rows, never those overflow pages. The ledger rows of the
    original run are given another epoch, so that a new mailbox never meets them.
    Returns the number of messages in the store."""
    off = f"{{k}} * {OFFSET}"
    suffix = "'-{k}'"
    plans = {
        "cases": {
            "id": f"id + {off}",
            "case_number": f"case_number || {suffix}",
            "normalized_subject": f"normalized_subject || {suffix}",
            "subject": f"subject || {suffix}",
            "related_case_id": f"related_case_id + {off}",
        },
        "messages": {
            "id": f"id + {off}",
            "case_id": f"case_id + {off}",
            "message_id": f"message_id || {suffix}",
            "in_reply_to": f"in_reply_to || {suffix}",
            "subject": f"subject || {suffix}",
            "sha256": "substr(sha256, 1, 56) || printf('%08d', {k})",
            "body_text": "substr(body_text, 1, 300)",
            "body_html": "NULL",
            "stored_mime": "NULL",
            "raw": "X'00'",
        },
        "case_participants": {"case_id": f"case_id + {off}"},
        "case_tags": {"case_id": f"case_id + {off}"},
        "ledger": {
            "item": f"item || {suffix}",
            "message_row": f"message_row + {off}",
            "message_id": f"message_id || {suffix}",
            "sha256": "substr(sha256, 1, 56) || printf('%08d', {k})",
            "quarantine_id": "NULL",
        },
    }
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("PRAGMA foreign_keys=OFF")
        db.execute("BEGIN")
        db.execute("UPDATE ledger SET epoch = epoch || '-seed'")
        for table in plans:
            db.execute(f"CREATE TEMP TABLE {table}_seed AS SELECT * FROM main.{table}")
        for k in range(1, copies + 1):
            for table, overrides in plans.items():
                _copy(db, table, k, overrides)
        db.execute("COMMIT")
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return int(db.execute("SELECT count(*) FROM messages").fetchone()[0])
    finally:
        db.close()
