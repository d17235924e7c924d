"""Conformance: every real-world corpus mail goes through the whole pipeline against Dovecot.

Each ends as a case (or an ignored automatic mail) or in quarantine with a reason:
zero crashes, zero lost. The corpus is third-party data read in place from
../shared/corpus (never copied here); without it these tests skip.
"""

from __future__ import annotations

import hashlib
import imaplib
from pathlib import Path

import pytest

from devkit.dovecot import DovecotSandbox
from engage_listener.cases.engine import CaseEngine, EngineSettings
from engage_listener.store.interface import MailKey
from engage_listener.store.sqlite.store import SqliteStore
from tests.support.fakes import FakeClock
from tests.support.helpers import Harness, db_rows, listener_config
from tests.support.paths import CORPUS

MAIL_SUFFIXES = {".box", ".eml", ".txt", ".elm"}


def corpus_mails() -> list[Path]:
    if not CORPUS.is_dir():
        pytest.skip(f"corpus folder {CORPUS} is absent (third-party fixtures, not in the repo)")
    return sorted(p for p in CORPUS.rglob("*") if p.suffix in MAIL_SUFFIXES and p.is_file())


@pytest.mark.slow
@pytest.mark.parametrize("extract", [True, False], ids=["extract", "whole-mail"])
async def test_every_corpus_mail_becomes_a_case_or_a_quarantine_entry(
    dovecot: DovecotSandbox, mailbox_user: str, tmp_path: Path, extract: bool
) -> None:
    paths = corpus_mails()
    assert len(paths) > 150
    appended: dict[str, str] = {}  # sha256 -> file
    refused: list[Path] = []
    dovecot.create_folder(mailbox_user, "IMAP/Done")
    for path in paths:
        raw = path.read_bytes()
        try:
            dovecot.append(mailbox_user, "IMAP/New", raw)
            appended[hashlib.sha256(raw).hexdigest()] = path.name
        except imaplib.IMAP4.error:
            refused.append(path)  # the server itself refuses it (e.g. NUL bytes): see below
    db = tmp_path / "s.sqlite3"
    cfg = listener_config(
        dovecot, mailbox_user, extract_attachments=extract, sync_max_changes_count=1000
    )
    async with Harness(cfg, db, FakeClock()) as h:
        assert h.listener is not None
        result = await h.listener.run_once()
    assert result.failed == 0
    assert dovecot.count(mailbox_user, "IMAP/New") == 0
    error_count = (
        dovecot.count(mailbox_user, "IMAP/Error")
        if dovecot.folder_exists(mailbox_user, "IMAP/Error")
        else 0
    )
    assert dovecot.count(mailbox_user, "IMAP/Done") + error_count == len(appended)
    stored = dict(db_rows(db, "SELECT sha256, state FROM ledger"))
    # Dovecot may rewrite line endings, so compare counts, and hashes where they match.
    assert len(stored) == len(appended)
    assert set(stored.values()) <= {"moved", "quarantined"}
    quarantined = db_rows(db, "SELECT reason FROM quarantine")
    assert all(reason.strip() for (reason,) in quarantined)
    assert db_rows(db, "SELECT count(*) FROM messages")[0][0] + len(quarantined) == len(appended)
    assert len(refused) < 5, f"server refused too many corpus mails: {refused}"


async def test_mails_the_server_refuses_still_go_through_the_engine(tmp_path: Path) -> None:
    """Mails Dovecot would not store (NUL bytes...) are fed to the engine directly."""
    store = SqliteStore(tmp_path / "s.sqlite3")
    await store.open()
    engine = CaseEngine(store, EngineSettings("L", extract_attachments=True))
    try:
        for uid, path in enumerate(corpus_mails(), start=1):
            done = await engine.ingest(MailKey("L", "direct", "1", str(uid)), path.read_bytes())
            assert done.case_id is not None or done.ignored or done.duplicate, path.name
    finally:
        await store.close()
    assert db_rows(tmp_path / "s.sqlite3", "SELECT count(*) FROM ledger")[0][0] == uid
