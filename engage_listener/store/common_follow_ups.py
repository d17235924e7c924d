"""The look-ups and writes behind `cases.follow_ups`, said alike by both stores: which
open (or closed) cases a mail names, and who takes part in a case. Written once with `?`
marks (see `common_writes.TxSql`); each store's `follow_ups.FollowUpQueries` mixes it
into its transaction.

Decisions:

* Every candidate carries its `closed_at` (None for an open case): the engine decides from
  it whether a follow-up reopens a closed case or opens a new one (`ReopenDays`).
* A bare number is tried as a case id only while it fits a bigint (19 digits and more
  would be an error on the server, or SQLite's driver, not "no such case").
* Null-safe equality differs by dialect (`_same`): SQLite's `IS`, PostgreSQL's `IS NOT
  DISTINCT FROM` (SQLite has it only from 3.39, newer than many systems' SQLite).
* A mail's participants are added with one multi-row INSERT (`_send`: nobody reads the
  result, PostgreSQL queues it): a statement each cost PostgreSQL's driver its Python
  work each.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from engage_listener.store.common_writes import TxSql
from engage_listener.store.records import CaseCandidate

_CANDIDATE = "c.id, c.case_number, c.listener, c.process, c.closed_at"
_OPEN = "c.status IN ('open', 'pending-approval')"
_CLOSED = "c.status = 'closed'"
_BIGINT_DIGITS = 18  # any number of at most 18 digits fits a bigint
_ROWS_A_STATEMENT = 100  # participants one INSERT adds (a mail adds at most 100)


# Whether the address (twice) is `is_participant` of case c, as a column.
_TAKES_PART = (
    "(EXISTS (SELECT 1 FROM case_participants p WHERE p.case_id = c.id AND p.address = ?)"
    " OR EXISTS (SELECT 1 FROM customer_addresses a WHERE a.customer_id = c.customer_id"
    " AND a.address = ?))"
)


def _candidate(row: Any, takes_part: bool | None = None) -> CaseCandidate:
    return CaseCandidate(int(row[0]), str(row[1]), str(row[2]), row[3], row[4], takes_part)


class CommonFollowUps(TxSql):
    """See `store.Transaction`; `_same` comes from the store's `FollowUpQueries`."""

    _same: str  # equal, or both NULL: SQLite's `IS` (3.39 knows `IS NOT DISTINCT FROM`)

    async def cases_by_message_ids(
        self, message_ids: Sequence[str], participant: str = ""
    ) -> list[CaseCandidate]:
        return await self._by_message_ids(message_ids, _OPEN, participant)

    async def closed_cases_by_message_ids(self, message_ids: Sequence[str]) -> list[CaseCandidate]:
        return await self._by_message_ids(message_ids, _CLOSED)

    async def case_by_number(self, case_number: str) -> CaseCandidate | None:
        return await self._by_number(case_number, _OPEN)

    async def closed_case_by_number(self, case_number: str) -> CaseCandidate | None:
        return await self._by_number(case_number, _CLOSED)

    async def closed_case_by_subject(
        self, customer_id: int | None, process: str | None, normalized_subject: str
    ) -> CaseCandidate | None:
        if customer_id is None or not normalized_subject:
            return None
        row = await self._row(
            f"SELECT {_CANDIDATE} FROM cases c WHERE c.customer_id = ?"  # noqa: S608
            f" AND c.process {self._same} ? AND c.normalized_subject = ?"
            f" AND {_CLOSED} ORDER BY c.id DESC LIMIT 1",
            (customer_id, process, normalized_subject),
        )
        return _candidate(row) if row else None

    async def _by_message_ids(
        self, message_ids: Sequence[str], status: str, participant: str = ""
    ) -> list[CaseCandidate]:
        ids = list(dict.fromkeys(m for m in message_ids if m))  # every one: a parent may be last
        if not ids:
            return []
        match, params = self._in(ids)
        takes_part, asked = ", NULL", tuple[str, ...]()
        if participant:
            takes_part, asked = f", {_TAKES_PART}", (participant.lower(),) * 2
        rows = await self._all(
            self._sql(
                f"SELECT DISTINCT {_CANDIDATE}{takes_part} FROM messages m"  # noqa: S608
                f" JOIN cases c ON c.id = m.case_id WHERE m.message_id {match} AND {status}"
                " ORDER BY c.id DESC LIMIT 20"
            ),
            (*asked, *params),
        )
        return [_candidate(row, None if row[5] is None else bool(row[5])) for row in rows]

    async def _by_number(self, case_number: str, status: str) -> CaseCandidate | None:
        row = await self._row(
            f"SELECT {_CANDIDATE} FROM cases c WHERE c.case_number = ? AND {status}",  # noqa: S608
            (case_number,),
        )
        if row is None and case_number.isdigit() and len(case_number) <= _BIGINT_DIGITS:
            row = await self._row(  # "[Case#123]" for case 000123
                f"SELECT {_CANDIDATE} FROM cases c WHERE c.id = ? AND {status}",  # noqa: S608
                (int(case_number),),
            )
        return _candidate(row) if row else None

    async def is_participant(self, case_id: int, address: str) -> bool:
        row = await self._row(
            "SELECT 1 FROM case_participants WHERE case_id = ? AND address = ?"
            " UNION ALL SELECT 1 FROM customer_addresses a JOIN cases c"
            " ON c.customer_id = a.customer_id WHERE a.address = ? AND c.id = ? LIMIT 1",
            (case_id, address.lower(), address.lower(), case_id),
        )
        return row is not None

    async def add_participants(self, case_id: int, addresses: Sequence[str]) -> None:
        unique = list(dict.fromkeys(a.strip().lower() for a in addresses if a.strip()))
        for start in range(0, len(unique), _ROWS_A_STATEMENT):
            chunk = unique[start : start + _ROWS_A_STATEMENT]
            await self._send(
                self._sql(
                    "INSERT INTO case_participants (case_id, address) VALUES "  # noqa: S608
                    + ", ".join(["(?, ?)"] * len(chunk))  # marks only
                    + " ON CONFLICT DO NOTHING"
                ),
                tuple(v for address in chunk for v in (case_id, address)),
            )
