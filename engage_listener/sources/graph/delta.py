"""Finding new mail in a Graph folder with ``messages/delta``: Graph's answer to IDLE.

A delta round returns what changed in the folder since the last round's
``@odata.deltaLink``: messages added or updated, and ``@removed`` entries for those moved
out or deleted. A change, for the batch trigger, is a *new* message: an id this watcher
has not seen in the folder (a flag change on a known mail is not one).

Decisions:

* The first round (no delta link yet) only learns what is in the folder: the startup
  batch takes all of it anyway.
* An expired token (410, `DeltaExpired`) starts the folder's synchronisation from
  scratch (the `Location` Graph gave, else the initial delta URL); `poll` then says
  `resync`, and the listener runs a batch at once, which lists the whole folder: the
  ledger, not delta, decides what is new, so a resync can never make a duplicate.
* Only ids are asked for (``$select=id``): the listing of a batch reads what it needs.
"""

from __future__ import annotations

from dataclasses import dataclass

from engage_listener.sources.graph.answers import DeltaExpired
from engage_listener.sources.graph.http import GraphSession

PAGE_SIZE = 100


@dataclass(frozen=True)
class DeltaRound:
    new: int  # messages that were not in the folder before
    removed: int
    resync: bool = False  # the delta token had expired: everything was read again


class DeltaWatch:
    """The delta state of one folder on one connection."""

    def __init__(self, session: GraphSession, folder_id: str) -> None:
        self.session = session
        self.initial = f"{session.base}/mailFolders/{folder_id}/messages/delta"
        self.link: str | None = None  # the last round's @odata.deltaLink
        self.present: set[str] = set()  # ids seen in the folder, not yet removed
        self.rounds = 0

    async def poll(self) -> DeltaRound:
        """One delta round (all its pages); after an expired token, a fresh one."""
        try:
            return await self._round(self.link)
        except DeltaExpired as exc:
            restart = getattr(exc, "restart_url", "") or None
            self.link = None
            found = await self._round(restart)
            return DeltaRound(found.new, found.removed, resync=True)

    async def _round(self, start: str | None) -> DeltaRound:
        first = start is None and self.link is None
        url = start or self.link or self.initial
        params = {"$select": "id"} if url == self.initial else None
        new = removed = 0
        link: str | None = None
        async for page in self.session.pages(url, params, page_size=PAGE_SIZE):
            for row in page.get("value", []):
                if not isinstance(row, dict) or "id" not in row:
                    continue
                item = str(row["id"])
                if "@removed" in row:
                    removed += item in self.present
                    self.present.discard(item)
                elif item not in self.present:
                    self.present.add(item)
                    new += 1
            link = page.get("@odata.deltaLink") or link
        self.link = link
        self.rounds += 1
        return DeltaRound(0 if first else new, removed)
