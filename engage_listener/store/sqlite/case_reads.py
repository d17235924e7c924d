"""The SQLite store's reads of whole cases for operators and other systems: `cases show`,
`cases export`, `attachments save`, `cases close --idle-days`; the SQL both stores say
alike is in `common_reads`. A part of `store.SqliteStore`, kept apart for size.

Decisions:

* Export pages by id (`cases_page`), never one query over every case: each page is one
  short read under the store's lock, so the daemon keeps writing while a large export
  runs, and the exporter holds one page at a time.
* A message's To, Cc and Reply-To were never columns: they are read from the start of
  its raw mail (`HEADER_BYTES`), which is always kept, so mails stored before this
  version show them too.
* A case's tags and related cases are two more short reads per case (a read here costs
  no round trip); PostgreSQL reads them in the case's row instead.
"""

from __future__ import annotations

from typing import Any

from engage_listener.store.common_reads import CASE_COLUMNS, CommonReads, detail_row
from engage_listener.store.records import CaseDetail


class CaseReads(CommonReads):
    """See `store.Store`; `query` comes from the store."""

    _case_columns = CASE_COLUMNS

    async def _details(self, rows: list[Any]) -> list[CaseDetail]:
        return [await self._detail(r) for r in rows]

    async def _detail(self, r: Any) -> CaseDetail:
        case_id, related_id = int(r[0]), r[16]
        tags = await self.query(
            "SELECT tag FROM case_tags WHERE case_id = ? ORDER BY tag", (case_id,)
        )
        linked = await self.query(
            "SELECT id, case_number FROM cases WHERE id = ? OR related_case_id = ? ORDER BY id",
            (related_id, case_id),
        )
        return detail_row(r, [(x[0], x[1]) for x in linked], [t[0] for t in tags])
