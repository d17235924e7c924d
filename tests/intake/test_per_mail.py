"""The one per-mail path (`intake.per_mail.MailPath`) every source hands its mail to."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from engage_listener.cases.ingested import Ingested
from engage_listener.config.model import StoreConfig
from engage_listener.errors import QuarantineNow, StoreError
from engage_listener.intake.contract import Delivered
from engage_listener.intake.per_mail import MailPath
from engage_listener.store.interface import MailKey, Store
from engage_listener.store.open import open_store

KEY = MailKey("L", "INBOX", "7", "3")


class Log:
    """Records (level, event, fields) like the structured logger."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str, dict[str, Any]]] = []

    def __getattr__(self, level: str) -> Any:
        return lambda event, **fields: self.lines.append((level, event, fields))


class Handler:
    """Fails as told: `error` is raised by every `ingest`."""

    def __init__(self, error: Exception | None = None) -> None:
        self.error = error
        self.quarantined: list[tuple[MailKey, bytes, str, int]] = []

    def prepare(self, raw: bytes) -> object:
        return None

    async def ingest(self, key: MailKey, raw: bytes, prepared: object = None) -> Ingested:
        if self.error is not None:
            raise self.error
        return Ingested(1, "000001", True, False, ack="queued")

    async def quarantine(self, key: MailKey, raw: bytes, reason: str, attempts: int) -> int:
        self.quarantined.append((key, raw, reason, attempts))
        return len(self.quarantined)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    opened = await open_store(StoreConfig(tmp_path / "cases.sqlite3"))
    try:
        yield opened
    finally:
        await opened.close()


def _path(store: Store, handler: Handler, log: Log, max_attempts: int = 3) -> MailPath:
    return MailPath(
        store, handler, max_attempts=max_attempts, log=log, quarantine_fields={"error_folder": "E"}
    )


async def test_a_committed_mail_is_logged_with_the_source_names(store: Store) -> None:
    log = Log()
    handled = await _path(store, Handler(), log).take(Delivered(KEY, b"raw", {"uid": 3}))
    assert handled.outcome == "committed" and handled.ingested is not None
    [(level, event, fields)] = log.lines
    assert (level, event) == ("info", "message")
    assert list(fields)[:2] == ["uid", "case_id"] and fields["size"] == 3
    assert fields["ack"] == "queued"


async def test_quarantine_now_quarantines_at_once(store: Store) -> None:
    log, handler = Log(), Handler(QuarantineNow("unknown sender"))
    handled = await _path(store, handler, log).take(Delivered(KEY, b"raw", {"uid": 3}))
    assert (handled.outcome, handled.quarantine_id, handled.attempts) == ("quarantined", 1, 1)
    assert handler.quarantined == [(KEY, b"raw", "unknown sender", 1)]
    [(level, event, fields)] = log.lines
    assert (level, event, fields["error_folder"]) == ("warning", "message_quarantined", "E")


async def test_failures_count_until_max_attempts_then_quarantine(store: Store) -> None:
    log, handler = Log(), Handler(ValueError("bad header"))
    path = _path(store, handler, log, max_attempts=2)
    mail = Delivered(KEY, b"raw", {"uid": "u1", "number": 4})
    first = await path.take(mail)
    assert (first.outcome, first.attempts) == ("failed", 1)
    second = await path.take(mail)
    assert (second.outcome, second.attempts) == ("quarantined", 2)
    assert handler.quarantined == [(KEY, b"raw", "ValueError: bad header", 2)]
    events = [(level, event) for level, event, _ in log.lines]
    assert events == [
        ("error", "message_failed"),
        ("error", "message_failed"),
        ("warning", "message_quarantined"),
    ]
    assert log.lines[0][2]["number"] == 4 and log.lines[0][2]["max_attempts"] == 2


async def test_a_store_error_is_no_outcome(store: Store) -> None:
    path = _path(store, Handler(StoreError("disk full")), Log())
    with pytest.raises(StoreError):
        await path.take(Delivered(KEY, b"raw"))
    assert await store.record_failure(KEY, "counted now") == 1  # none was counted before
