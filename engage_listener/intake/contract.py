"""The contract between a mail source and intake: what a source delivers, and how it
learns what committed.

A source (IMAP and POP3 today, Microsoft Graph or others tomorrow) lists its mail and
builds each one's `MailKey` (listener, mailbox, epoch, item: see `store.records`); it
skips what the ledger already holds (`Store.known_states`, `Store.ledger_history`), and
hands every other mail to the one per-mail path (`intake.per_mail.MailPath`) as a
`Delivered`. The path answers with a `Handled`:

* `committed` or `quarantined`: the mail's transaction committed (a case, or the
  quarantine). Only now may the source settle it on its server (move it, delete it,
  DELE it), and then record that with `Store.mark_done`.
* `failed`: nothing committed but one more attempt; the mail stays where it is and is
  tried again by a later batch, until MaxAttempts sends it to quarantine.

A `StoreError` is no outcome: it propagates, and the source stops settling anything of
what follows (nothing of it committed).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol

from engage_listener.cases.ingested import Ingested
from engage_listener.intake.parse_ahead import Preparer
from engage_listener.store.interface import MailKey

__all__ = ["Delivered", "Handled", "Handler", "Ingested", "MailKey", "Outcome"]

Outcome = Literal["committed", "quarantined", "failed"]


class Handler(Preparer, Protocol):
    """Turns one mail into a case (the case engine), or keeps it in quarantine; its
    `prepare` (parsing) may run ahead while the store is busy (`ParseAhead`)."""

    async def ingest(self, key: MailKey, raw: bytes, prepared: object = None) -> Ingested:
        """`prepared` is what `prepare` returned for these bytes, if it ran."""
        ...

    async def quarantine(self, key: MailKey, raw: bytes, reason: str, attempts: int) -> int: ...


@dataclass(frozen=True)
class Delivered:
    """One mail as a source hands it over.

    `where` is how the source names the mail in log lines (IMAP: its UID; POP3: its UIDL
    and message number), `prepared` what the parse-ahead made of it, if anything.
    """

    key: MailKey
    raw: bytes
    where: Mapping[str, object] = field(default_factory=dict)
    prepared: object = None


@dataclass(frozen=True)
class Handled:
    """What became of a delivered mail; see the module docstring for what a source does."""

    outcome: Outcome
    ingested: Ingested | None = None  # committed: what the engine made of it
    quarantine_id: int | None = None  # quarantined: the entry
    attempts: int = 0  # failed or quarantined after failures: attempts so far
