"""The reads every mail starts with, several in one statement: each was a round trip.

A part of `transaction.PostgresTransaction`, kept apart for size. `find_arrival` is
`find_duplicate` and `find_customer` in one row; `cases_by_subject` is
`open_case_by_subject` and `closed_case_by_subject` (`follow_ups`) in one row: the same
conditions, so each half says what the look-up alone says (tests/store holds both stores
to it).
"""

from __future__ import annotations

from typing import Any

from engage_listener.store.records import CaseCandidate, CaseRef, Customer, MailSeen

# A customer and its addresses in one row (one round trip).
CUSTOMER = (
    "c.id, c.name, ARRAY(SELECT x.address FROM customer_addresses x"
    " WHERE x.customer_id = c.id ORDER BY x.address)"
)


# find_duplicate and find_customer in one row (one round trip): the row of the same mail
# under another key, then the customer's columns (NULL: no customer with that address).
DUPLICATE = (
    "SELECT message_row FROM ledger WHERE listener = %s AND sha256 = %s"
    " AND message_id IS NOT DISTINCT FROM %s AND message_row IS NOT NULL LIMIT 1"
)
_ARRIVAL = (
    f"SELECT ({DUPLICATE}), {CUSTOMER} FROM (SELECT 1) AS one"  # noqa: S608
    " LEFT JOIN customer_addresses a ON a.address = %s"
    " LEFT JOIN customers c ON c.id = a.customer_id"
)


# open_case_by_subject and closed_case_by_subject (store.postgres.follow_ups) in one row.
_SUBJECT = (
    "FROM cases c WHERE c.customer_id = %s AND c.process IS NOT DISTINCT FROM %s"
    " AND c.normalized_subject = %s AND c.status {} ORDER BY c.id DESC LIMIT 1"
)
_BY_SUBJECT = (
    "SELECT o.id, o.case_number, s.id, s.case_number, s.listener, s.process, s.closed_at"  # noqa: S608
    " FROM (SELECT 1) AS one LEFT JOIN LATERAL (SELECT c.id, c.case_number "
    + _SUBJECT.format("IN ('open', 'pending-approval')")
    + ") AS o ON true LEFT JOIN LATERAL (SELECT c.id, c.case_number, c.listener,"
    " c.process, c.closed_at " + _SUBJECT.format("= 'closed'") + ") AS s ON true"
)


def customer_row(row: Any) -> Customer | None:
    return None if row is None else Customer(int(row[0]), str(row[1]), tuple(map(str, row[2])))


class ArrivalReads:
    """See `store.Transaction`; `_one` comes from the transaction."""

    async def _one(self, sql: str, params: Any = ()) -> Any:
        raise NotImplementedError

    async def find_arrival(
        self, listener: str, sha256: str, message_id: str | None, address: str
    ) -> MailSeen:
        row = await self._one(_ARRIVAL, (listener, sha256, message_id, address.lower()))
        duplicate = None if row[0] is None else int(row[0])
        return MailSeen(duplicate, None if row[1] is None or not address else customer_row(row[1:]))

    async def cases_by_subject(
        self, customer_id: int | None, process: str | None, normalized_subject: str
    ) -> tuple[CaseRef | None, CaseCandidate | None]:
        if customer_id is None or not normalized_subject:
            return None, None
        row = await self._one(_BY_SUBJECT, (customer_id, process, normalized_subject) * 2)
        found = None if row[0] is None else CaseRef(int(row[0]), str(row[1]))
        closed = None if row[2] is None else CaseCandidate(
            int(row[2]), str(row[3]), str(row[4]), row[5], row[6]
        )  # fmt: skip
        return found, closed
