"""ReadFromDate for POP3, by the mail's Date header, and `reset --date` on LeaveOnServer.

POP3 gives no received (internal) date, so the only date a POP3 mail carries is its
`Date` header, written by the sender's program: usually the sending time, sometimes a
wrong clock, a forged value, or none. ReadFromDate on a POP3 listener is therefore
approximate: a new mail (one the ledger lacks) whose Date is before it is left on the
server untaken; a mail without a readable Date is taken (nothing says it is old).

Decisions:

* The header is read with `TOP n 0`, before the whole mail is fetched, so old mail costs
  one short command and is never downloaded; each UIDL found too old is remembered
  (with its size) so later polls do not ask again. The memory is dropped when the date
  moves (a reset), and for UIDLs that left the server.
* `reset --date DAY` lowers the date for this listener (never raises it above
  ReadFromDate): mail dated since DAY that the ledger lacks is taken at the next poll,
  and mail the ledger has is never taken twice (the UIDL/hash checks of `ledger`). It
  is offered for LeaveOnServer listeners, the only ones whose older mail is still on
  the server to be read again (`ops.commands` refuses the others).
"""

from __future__ import annotations

import datetime as dt

from engage_listener.mail import parser

__all__ = ["DateFilter", "header_date"]


def header_date(header: bytes) -> dt.datetime | None:
    """The Date of a mail's header block (aware; None when absent or unreadable)."""
    return parser.parse(header + b"\r\n\r\n").date


class DateFilter:
    """Which new mails are older than the listener's ReadFromDate (or a reset's date)."""

    def __init__(self, configured: dt.datetime | None) -> None:
        self.configured = configured
        self.override: dt.datetime | None = None  # from `reset --date`
        self.too_old: dict[str, int] = {}  # UIDL -> listed size found too old

    @property
    def since(self) -> dt.datetime | None:
        """ReadFromDate, lowered by a date reset to an earlier day."""
        if self.configured is None or self.override is None:
            return self.configured
        return min(self.configured, self.override)

    def lower_to(self, moment: dt.datetime) -> None:
        """A `reset --date`: mail dated since `moment` is wanted again."""
        if self.override != moment:
            self.override = moment
            self.too_old.clear()

    def known_old(self, uidl: str, size: int) -> bool:
        """This mail was found too old before (the same UIDL and size)."""
        return self.since is not None and self.too_old.get(uidl) == size

    def judge(self, uidl: str, size: int, header: bytes) -> bool:
        """Whether the mail is too old to take; remembered when it is."""
        since = self.since
        date = header_date(header) if since is not None else None
        if since is None or date is None or date >= since:
            return False
        self.too_old[uidl] = size
        return True

    def forget_gone(self, present: set[str]) -> None:
        for uidl in [u for u in self.too_old if u not in present]:
            del self.too_old[uidl]
