"""What the SQLite and PostgreSQL stores share: SQL fragments both dialects read alike,
and the mapping of their rows to records.

Decisions:

* Only text and row mapping that is the same to the letter in both dialects lives here;
  the statements both stores say alike, with parameters, are written once with `?` marks
  in `common_reads`, `common_queries`, `common_writes` and `common_follow_ups`, and each
  store turns them into its own marks.
* Times are ISO text in UTC to the second, in both stores, so rows copy one to one
  (`store copy`).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from engage_listener.store.records import AckRow

ACK_COLUMNS = (
    "o.id, o.listener, o.case_id, c.case_number, o.recipient, o.subject, o.state, o.attempts,"
    " o.last_error, o.smtp_message_id, o.smtp_reply, o.created_at, o.sent_at, o.next_attempt_at"
)
ACK_FROM = "FROM outbox o LEFT JOIN cases c ON c.id = o.case_id"
# When a case last had mail (its creation, for a case without): `cases close --idle-days`.
LAST_MAIL = (
    "coalesce((SELECT max(m.received_at) FROM messages m WHERE m.case_id = cases.id),"
    " cases.created_at)"
)


def now_iso() -> str:
    """Now, as both stores write times."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def case_number(case_id: int) -> str:
    """A case's number: its id, six digits at least (`[Case#000042]`)."""
    return f"{case_id:06d}"


def ack_row(r: Any) -> AckRow:
    """A row of `SELECT {ACK_COLUMNS} {ACK_FROM}` as an acknowledgement."""
    due = r[13]
    return AckRow(
        id=int(r[0]),
        listener=str(r[1]),
        case_id=int(r[2]),
        case_number=None if r[3] is None else str(r[3]),
        recipient=str(r[4]),
        subject=str(r[5]),
        state=r[6],
        attempts=int(r[7]),
        last_error=r[8],
        smtp_message_id=str(r[9]),
        smtp_reply=r[10],
        created_at=str(r[11]),
        sent_at=r[12],
        next_attempt_at=(
            dt.datetime.fromtimestamp(float(due), dt.UTC).isoformat(timespec="seconds")
            if r[6] == "pending" and due
            else None
        ),
    )
