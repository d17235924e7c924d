"""The reads every mail starts with, several in one statement: each was a round trip.

A part of `transaction.PostgresTransaction`, kept apart for size. `find_arrival` is
`find_duplicate`, `find_customer` and (with a subject) `cases_by_subject` in one row;
`cases_by_subject` is `open_case_by_subject` and `closed_case_by_subject` (`follow_ups`)
in one row: the same conditions, so each part says what the look-up alone says
(tests/store holds both stores to it).

Decisions:

* The arrival also takes, from their identity sequences, the id of the mail's message
  row (unless it is a duplicate) and of a new case (when the engine says the mail would
  open one, `SubjectKey.opens`, and the customer has no case by its subject):
  `add_message` and `create_case` then queue their INSERTs with that id instead of
  waiting for RETURNING id, a round trip each (tests/cases/test_round_trips_pg.py). An
  id taken and not used (a mail quarantined, discarded or rolled back) is a gap, as a
  rolled-back INSERT leaves one; a mail that joins a case takes no case id, so case
  numbers keep no more gaps than before; ids stay in the order mails arrive. A new
  customer is made apart, committed at once (`customers`): it took an id here once.
* The duplicate look-up sits behind `OFFSET 0`: without it the planner copied it into
  each of the three uses of its result, and ran it three times a mail.
"""

from __future__ import annotations

from typing import Any

from engage_listener.store.records import CaseCandidate, CaseRef, Customer, MailSeen, SubjectKey

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

# open_case_by_subject and closed_case_by_subject (store.postgres.follow_ups) in one row,
# of the customer `{customer}` (SQL).
_OPEN, _CLOSED = "IN ('open', 'pending-approval')", "= 'closed'"
_SUBJECT = (
    "FROM cases k WHERE k.customer_id = {customer} AND k.process IS NOT DISTINCT FROM %s"
    " AND k.normalized_subject = %s AND k.status {status} ORDER BY k.id DESC LIMIT 1"
)
_CASES = (
    f" LEFT JOIN LATERAL (SELECT k.id, k.case_number {_SUBJECT.replace('{status}', _OPEN)})"
    " AS o ON true LEFT JOIN LATERAL (SELECT k.id, k.case_number, k.listener, k.process,"
    f" k.closed_at {_SUBJECT.replace('{status}', _CLOSED)}) AS s ON true"
)
_CASE_COLUMNS = "o.id, o.case_number, s.id, s.case_number, s.listener, s.process, s.closed_at"
_BY_SUBJECT = (
    f"SELECT {_CASE_COLUMNS} FROM (SELECT 1) AS one"  # noqa: S608
    + _CASES.format(customer="%s")
)

# The arrival: the duplicate, the customer, the ids taken for the message row (unless a
# duplicate) and for a new case (%s: `SubjectKey.opens`, and no case by subject), then the
# open and closed case by subject of the customer found (a NULL subject finds none).
_NEXT = "nextval(pg_get_serial_sequence('{}', 'id'))"
_ARRIVAL = (
    f"SELECT d.found, {CUSTOMER}, CASE WHEN d.found IS NULL THEN {_NEXT.format('messages')}"  # noqa: S608
    f" END, CASE WHEN %s AND d.found IS NULL AND o.id IS NULL AND s.id IS NULL"
    f" THEN {_NEXT.format('cases')} END, {_CASE_COLUMNS} FROM (SELECT ({DUPLICATE}) AS found"
    " OFFSET 0) AS d"  # OFFSET 0: the look-up once, not once for each use of d.found
    " LEFT JOIN customer_addresses a ON a.address = %s"
    " LEFT JOIN customers c ON c.id = a.customer_id" + _CASES.format(customer="c.id")
)


def customer_row(row: Any) -> Customer | None:
    return None if row is None else Customer(int(row[0]), str(row[1]), tuple(map(str, row[2])))


class ArrivalReads:
    """See `store.Transaction`; `_one` comes from the transaction, which starts the ids
    taken with `_taken_ids`."""

    _message_id: int | None  # taken for this mail's message row (see Decisions)
    _case_id: int | None  # taken for the case this mail opens

    def _taken_ids(self) -> None:
        self._message_id = self._case_id = None

    async def _one(self, sql: str, params: Any = ()) -> Any:
        raise NotImplementedError

    async def find_arrival(
        self,
        listener: str,
        sha256: str,
        message_id: str | None,
        address: str,
        subject: SubjectKey | None = None,
    ) -> MailSeen:
        address = address.lower()
        process, normalized = (subject.process, subject.normalized or None) if subject else (
            None, None
        )  # fmt: skip
        opens = subject is not None and subject.opens
        row = await self._one(
            _ARRIVAL,
            (opens, listener, sha256, message_id, address) + (process, normalized) * 2,
        )
        duplicate = None if row[0] is None else int(row[0])
        customer = None if row[1] is None or not address else customer_row(row[1:4])
        self._message_id = None if row[4] is None else int(row[4])
        self._case_id = None if row[5] is None else int(row[5])
        return MailSeen(duplicate, customer, _cases(row[6:]) if subject else None)

    def _take_message_id(self) -> int | None:
        """The id `find_arrival` took for this mail's message row, once."""
        taken, self._message_id = self._message_id, None
        return taken

    def _take_case_id(self) -> int | None:
        """The id `find_arrival` took for the case this mail opens, once."""
        taken, self._case_id = self._case_id, None
        return taken

    async def cases_by_subject(
        self, customer_id: int | None, process: str | None, normalized_subject: str
    ) -> tuple[CaseRef | None, CaseCandidate | None]:
        if customer_id is None or not normalized_subject:
            return None, None
        return _cases(await self._one(_BY_SUBJECT, (customer_id, process, normalized_subject) * 2))


def _cases(row: Any) -> tuple[CaseRef | None, CaseCandidate | None]:
    """The open and the closed case of `_CASE_COLUMNS`."""
    found = None if row[0] is None else CaseRef(int(row[0]), str(row[1]))
    closed = None if row[2] is None else CaseCandidate(
        int(row[2]), str(row[3]), str(row[4]), row[5], row[6]
    )  # fmt: skip
    return found, closed
