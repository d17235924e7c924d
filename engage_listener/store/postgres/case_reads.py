"""The PostgreSQL store's reads of whole cases for operators and other systems: `cases
show`, `cases export`; the SQL both stores say alike is in `common_reads`. A part of
`store.PostgresStore`, kept apart for size.

Decisions:

* A case's tags and related cases come in the case's own row (ARRAY sub-selects), not
  by two more queries per case as in SQLite: each query here is a round trip and a
  connection from the pool, and `cases export` reads every case a page at a time.
* Export pages by id (`cases_page`), never one query over every case: the exporter holds
  one page at a time, and each page is a short read beside the daemons' writes.
* A message's To, Cc and Reply-To are read from the start of its raw mail
  (`HEADER_BYTES`), cut on the server: only that much of each mail crosses the wire.
"""

from __future__ import annotations

from typing import Any

from engage_listener.store.common_reads import CASE_COLUMNS, CommonReads, detail_row
from engage_listener.store.records import CaseDetail

_LINKED = "FROM cases r WHERE r.id = c.related_case_id OR r.related_case_id = c.id ORDER BY r.id"
_COLUMNS = (  # fixed text
    f"{CASE_COLUMNS},"  # noqa: S608
    " ARRAY(SELECT t.tag FROM case_tags t WHERE t.case_id = c.id ORDER BY t.tag),"
    f" ARRAY(SELECT r.id {_LINKED}), ARRAY(SELECT r.case_number {_LINKED})"
)


class CaseReads(CommonReads):
    """See `store.Store`: the cases' rows, read by `common_reads.CommonReads`."""

    _case_columns = _COLUMNS

    async def _details(self, rows: list[Any]) -> list[CaseDetail]:
        return [detail_row(r, zip(r[18], r[19], strict=True), r[17]) for r in rows]
