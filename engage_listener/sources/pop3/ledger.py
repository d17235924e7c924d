"""What the ledger knows about a POP3 UIDL: which mails were taken under it, and as what.

RFC 1939 asks a server never to reuse a UIDL, but servers that rebuild their maildrop
(a migration, a restored backup, a hashed listing) do. A UIDL alone would then make a
new mail look taken, and the listener would DELE it unseen. So each ledger row of a
POP3 mail is compared with what the server lists now (size, and before a DELE the
SHA-256 of the whole mail) and a different mail under an old UIDL is taken as a new
generation of that UIDL: its own mail key, (listener, mailbox "", epoch generation,
item UIDL). POP3 has one maildrop, hence no mailbox; the generation is the epoch of
that UIDL, as UIDVALIDITY is the epoch of an IMAP folder's UIDs.

Decisions:

* Generation 0 is the first mail under a UIDL; schema migration 6 turned the keys of
  earlier versions, ("#pop3:" + UIDL, 0, generation), into these.
* The size of a row is its stored mail's (`messages.size`, or the quarantined raw's);
  an `oversize` quarantine stores only the header, so such a row matches by the
  SHA-256 of `TOP n 0`, never by size.
"""

from __future__ import annotations

from dataclasses import dataclass

from engage_listener.store.interface import MailKey, Store
from engage_listener.store.records import LedgerState

MAILBOX = ""  # a POP3 maildrop has no folders
OVERSIZE = "oversize"  # the quarantine reason of a mail over MaxMessageSize starts with it


def ledger_key(listener: str, uidl: str, generation: int = 0) -> MailKey:
    """The mail key of a POP3 mail: its UIDL, and which mail under that UIDL it is."""
    return MailKey(listener, MAILBOX, str(generation), uidl)


@dataclass(frozen=True)
class Seen:
    """One mail taken under a UIDL: its generation, ledger state, SHA-256 and size."""

    generation: int
    state: LedgerState
    sha256: str
    size: int | None


async def seen(store: Store, listener: str, uidl: str) -> tuple[Seen, ...]:
    """Every mail this listener took under `uidl`, oldest first."""
    rows = await store.ledger_history(listener, MAILBOX, uidl)
    return tuple(Seen(int(r.epoch), r.state, r.sha256, r.size) for r in rows)


def next_generation(rows: tuple[Seen, ...]) -> int:
    """The generation a new mail under this UIDL gets."""
    return max((r.generation for r in rows), default=-1) + 1


def by_hash(rows: tuple[Seen, ...], sha256: str) -> Seen | None:
    """The row of exactly this mail, if it was taken under this UIDL before."""
    return next((r for r in rows if r.sha256 == sha256), None)


def by_size(rows: tuple[Seen, ...], size: int) -> Seen | None:
    """A row whose mail has the size the server lists (LeaveOnServer: enough to skip it)."""
    return next((r for r in rows if r.size == size), None)
