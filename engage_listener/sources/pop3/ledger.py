"""What the ledger knows about a POP3 UIDL: which mails were taken under it, and as what.

RFC 1939 asks a server never to reuse a UIDL, but servers that rebuild their maildrop
(a migration, a restored backup, a hashed listing) do. A UIDL alone would then make a
new mail look taken, and the listener would DELE it unseen. So each ledger row of a
POP3 mail is compared with what the server lists now (size, and before a DELE the
SHA-256 of the whole mail) and a different mail under an old UIDL is taken as a new
generation of that UIDL: its own ledger key, (listener, "#pop3:" + UIDL, 0, generation).

Decisions:

* Generation 0 is the key every earlier version used, so existing ledgers stay valid.
* The size of a row is its stored mail's (`messages.size`, or the quarantined raw's);
  an `oversize` quarantine stores only the header, so such a row matches by the
  SHA-256 of `TOP n 0`, never by size.
"""

from __future__ import annotations

from dataclasses import dataclass

from engage_listener.store.interface import LedgerKey, Store

LEDGER_PREFIX = "#pop3:"  # ledger "folder" of a POP3 mail: the prefix and its UIDL
OVERSIZE = "oversize"  # the quarantine reason of a mail over MaxMessageSize starts with it

_ROWS = (
    "SELECT l.uid, l.state, l.sha256, COALESCE(m.size, length(q.raw))"
    " FROM ledger l LEFT JOIN messages m ON m.id = l.message_row"
    " LEFT JOIN quarantine q ON q.id = l.quarantine_id"
    " WHERE l.listener = ? AND l.folder = ? AND l.uidvalidity = 0 ORDER BY l.uid"
)


def ledger_key(listener: str, uidl: str, generation: int = 0) -> LedgerKey:
    """The ledger key of a POP3 mail: its UIDL, and which mail under that UIDL it is."""
    return LedgerKey(listener, LEDGER_PREFIX + uidl, 0, generation)


@dataclass(frozen=True)
class Seen:
    """One mail taken under a UIDL: its generation, ledger state, SHA-256 and size."""

    generation: int
    state: str
    sha256: str
    size: int | None


async def seen(store: Store, listener: str, uidl: str) -> tuple[Seen, ...]:
    """Every mail this listener took under `uidl`, oldest first."""
    rows = await store.query(_ROWS, (listener, LEDGER_PREFIX + uidl))
    return tuple(
        Seen(int(r[0]), str(r[1]), str(r[2]), None if r[3] is None else int(r[3])) for r in rows
    )


def next_generation(rows: tuple[Seen, ...]) -> int:
    """The generation a new mail under this UIDL gets."""
    return max((r.generation for r in rows), default=-1) + 1


def by_hash(rows: tuple[Seen, ...], sha256: str) -> Seen | None:
    """The row of exactly this mail, if it was taken under this UIDL before."""
    return next((r for r in rows if r.sha256 == sha256), None)


def by_size(rows: tuple[Seen, ...], size: int) -> Seen | None:
    """A row whose mail has the size the server lists (LeaveOnServer: enough to skip it)."""
    return next((r for r in rows if r.size == size), None)
