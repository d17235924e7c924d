"""One Graph batch: take every mail in the input folder, commit each, then move them all.

The IMAP order, for the same exactly-once guarantee: a mail is moved (or deleted) only
after its transaction committed, and a mail the ledger already holds is never ingested
again, only moved on. Its key is (listener, input folder id, "", immutable message id):
an immutable id survives moves, so a mail found again after a crash, a resync or a
person moving it back is the same key.

Decisions:

* Every mail of the folder is listed (paged), not only what delta reported: delta finds
  *that* mail arrived, the folder listing is the truth about what is to be done, so a
  lost delta round or an expired token can never lose a mail.
* Bodies are fetched as MIME (``$value``) a few ahead of the mail being committed (at
  most `FETCH_AHEAD`, within the session's 4 requests per mailbox), so Graph works
  while the store does, and memory holds a handful of mails, not the folder.
* A body larger than MaxMessageSize is refused by the transport as soon as its length
  is known (the Content-Length, else while streaming): the mail is quarantined
  `oversize` with a header made of what the listing says (sender, subject, Message-ID,
  date), so `quarantine show` tells the operator what it was, and it goes to the error
  folder.
* Moves go through ``$batch``, `MOVE_BATCH` a call: Graph runs the sub-requests of one
  ``$batch`` in parallel, and they count against the 4 concurrent requests a mailbox
  allows (more are throttled with 429), so a bigger call would only buy waits. A 404 on
  a move or delete of a mail the ledger says committed means it is already gone (moved
  by an earlier run whose `mark_done` was lost, or by a person): it counts as done. Any
  other failure leaves the mail in the input folder; the ledger makes the next batch
  only move it.
* A mail the ledger says committed that the input folder no longer lists was moved by a
  run killed before its `mark_done` (`$batch` had answered), or by one whose store failed
  then: the first batch of each connection (`reconcile`) records it done, so no ledger
  row stays `committed` for a mail in the output folder. Only then: within a connection
  every answered move is marked, and the look-up reads all of a listener's ledger keys.
  (An immutable id never comes back to the input folder as another mail.)
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from engage_listener.intake.contract import Delivered, Handled, Handler
from engage_listener.intake.per_mail import MailPath
from engage_listener.observe.logs import Logger
from engage_listener.sources.graph.answers import GraphNotFound, ResponseTooLarge
from engage_listener.sources.graph.http import BatchRequest, GraphSession
from engage_listener.store.interface import MailKey, Store
from engage_listener.store.records import SettledState

EPOCH = ""  # immutable ids never change incarnation: no epoch
FETCH_AHEAD = 4
MOVE_BATCH = 4  # sub-requests per $batch call: Outlook's concurrency per mailbox
LIST_SELECT = "id,receivedDateTime,subject,from,internetMessageId"


@dataclass(frozen=True)
class Folders:
    """The resolved folders of one connection (ids) and the error folder's path."""

    input_id: str
    output_id: str | None  # None: processed mail is deleted (to Deleted Items)
    error_path: str  # resolved (or created) when a mail is first quarantined


@dataclass
class GraphBatchResult:
    found: int = 0
    ingested: int = 0
    already_known: int = 0
    failed: int = 0
    quarantined: int = 0
    gone: int = 0  # listed, then gone before it could be fetched
    too_old: int = 0  # received before ReadFromDate: left in the input folder, never read
    done: int = 0  # moved or deleted after commit
    seconds: float = 0.0
    oldest: str | None = None  # receivedDateTime of the oldest mail listed and read
    settle_failed: list[str] = field(default_factory=list)


def oversize_header(row: dict[str, Any]) -> bytes:
    """A header standing in for a mail too large to fetch: what the listing said of it."""
    sender = (row.get("from") or {}).get("emailAddress") or {}
    lines = [
        f"From: {sender.get('name', '')} <{sender.get('address', '')}>",
        f"Subject: {row.get('subject', '')}",
        f"Message-ID: {row.get('internetMessageId', '')}",
        f"X-Graph-Received: {row.get('receivedDateTime', '')}",
    ]
    text = "\r\n".join(" ".join(line.split()) for line in lines) + "\r\n\r\n"
    return text.encode("utf-8", "replace")


class GraphBatch:
    """Processes the input folder once; see the module docstring for the order."""

    def __init__(
        self,
        session: GraphSession,
        folders: Folders,
        listener: str,
        store: Store,
        handler: Handler,
        *,
        max_attempts: int,
        max_message_size: int,
        stop: asyncio.Event,
        log: Logger,
        ensure_error_folder: Callable[[], Awaitable[str]] | None = None,
        read_from: dt.datetime | None = None,
    ) -> None:
        self.session = session
        self.folders = folders
        self.listener = listener
        self.store = store
        self.max_message_size = max_message_size
        self.stop = stop
        self.log = log
        self.ensure_error_folder = ensure_error_folder
        self.read_from = read_from
        self.result = GraphBatchResult()
        self.committed: list[str] = []
        self.quarantined: list[str] = []
        self.path = MailPath(
            store,
            handler,
            max_attempts=max_attempts,
            log=log,
            quarantine_fields={"error_folder": folders.error_path},
        )

    def key(self, item: str) -> MailKey:
        return MailKey(self.listener, self.folders.input_id, EPOCH, item)

    async def run(self, *, reconcile: bool = False) -> GraphBatchResult:
        """One batch; `reconcile`: first record committed mail gone from the input folder
        as moved (see Decisions)."""
        started = time.monotonic()
        try:
            rows = await self.listing()
            if reconcile:
                await self._gone(rows)
            self.result.found = len(rows)
            rows = self._read_from_on(rows)
            self.result.oldest = str(rows[0].get("receivedDateTime")) if rows else None
            todo = await self._unknown(rows)
            await self._take_all(todo)
        finally:
            # Even when the store or Graph failed mid-batch, what did commit is moved on.
            await self._settle()
            self.result.seconds = time.monotonic() - started
        return self.result

    async def run_in_place(self, rows: list[dict[str, Any]]) -> GraphBatchResult:
        """Ingest `rows` (of the output folder, after `reset --date`) as `run` does, but
        leave committed mail where it is (recorded moved): processed mail lives there. Quarantined
        mail still goes to the error folder. The key stays the input folder's: an
        immutable id is the same wherever the mail was moved, so the ledger knows it."""
        started = time.monotonic()
        self.result.found = len(rows)
        try:
            await self._take_all(await self._unknown(rows))
        finally:
            if self.committed:  # where they belong already: recorded as moved
                await self.store.mark_done([self.key(i) for i in self.committed], "moved")
            self.committed.clear()
            await self._settle()
            self.result.seconds = time.monotonic() - started
        return self.result

    async def listing(
        self, folder_id: str | None = None, since: dt.datetime | None = None
    ) -> list[dict[str, Any]]:
        """Every mail in the input folder (or `folder_id`, received since `since`), oldest
        first."""
        where = f"{self.session.base}/mailFolders/{folder_id or self.folders.input_id}/messages"
        params = {"$select": LIST_SELECT, "$orderby": "receivedDateTime asc", "$top": "100"}
        if since is not None:  # $orderby's property must be filtered on too, first (Graph)
            stamp = since.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            params["$filter"] = f"receivedDateTime ge {stamp}"
        rows: list[dict[str, Any]] = []
        async for page in self.session.pages(where, params):
            rows.extend(r for r in page.get("value", []) if isinstance(r, dict) and "id" in r)
        return rows

    def _read_from_on(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Rows received before ReadFromDate are left where they are (and counted), as
        IMAP leaves them; one whose date Graph did not give is read."""
        if self.read_from is None:
            return rows
        kept = [r for r in rows if not _before(r.get("receivedDateTime"), self.read_from)]
        self.result.too_old = len(rows) - len(kept)
        return kept

    async def _unknown(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Rows to ingest; those already in the ledger (a crash before the move) only move."""
        ids = [str(r["id"]) for r in rows]
        known = await self.store.known_states(self.listener, self.folders.input_id, EPOCH, ids)
        for item, state in known.items():
            (self.quarantined if state == "quarantined" else self.committed).append(item)
        self.result.already_known += len(known)
        return [r for r in rows if str(r["id"]) not in known]

    async def _gone(self, rows: list[dict[str, Any]]) -> None:
        """Committed mails no longer in the input folder: already moved (see Decisions)."""
        listed = {str(r["id"]) for r in rows}
        unsettled = await self.store.unsettled(self.listener, self.folders.input_id, EPOCH)
        gone = [self.key(item) for item in unsettled if item not in listed]
        if gone:
            await self.store.mark_done(gone, _settled(self.folders.output_id, None))
            self.log.info("moved_before", mails=len(gone))

    async def _fetch(self, row: dict[str, Any]) -> bytes:
        """The MIME text; ResponseTooLarge (over MaxMessageSize) and GraphNotFound (gone
        meanwhile) are kept in the task for `_one`."""
        where = f"{self.session.base}/messages/{row['id']}/$value"
        return await self.session.get_bytes(where, max_bytes=self.max_message_size)

    async def _take_all(self, todo: list[dict[str, Any]]) -> None:
        """Fetch up to FETCH_AHEAD mails ahead of the one being committed, in order."""
        pending: list[tuple[dict[str, Any], asyncio.Task[bytes]]] = []
        rest = iter(todo)
        try:
            while True:
                while len(pending) < FETCH_AHEAD and (row := next(rest, None)) is not None:
                    pending.append((row, asyncio.create_task(self._fetch(row))))
                if not pending or self.stop.is_set():
                    return
                row, task = pending.pop(0)
                await self._one(row, task)
        finally:
            for _, task in pending:
                task.cancel()
            if pending:
                await asyncio.wait([task for _, task in pending])

    async def _one(self, row: dict[str, Any], task: asyncio.Task[bytes]) -> None:
        item = str(row["id"])
        where = {"id": item[-12:], "received": row.get("receivedDateTime")}
        try:
            raw = await task
        except GraphNotFound:
            self.result.gone += 1
            self.log.info("message_gone", **where)
            return
        except ResponseTooLarge:
            reason = f"oversize: more than MaxMessageSize {self.max_message_size} bytes"
            mail = Delivered(self.key(item), oversize_header(row), where)
            self._count(item, await self.path.quarantine(mail, reason, 1))
            return
        self._count(item, await self.path.take(Delivered(self.key(item), raw, where)))

    def _count(self, item: str, handled: Handled) -> None:
        """Committed mail is moved at the batch's end, quarantined mail to the error
        folder; a failed one stays for the next batch."""
        if handled.outcome == "committed":
            self.committed.append(item)
            self.result.ingested += 1
        elif handled.outcome == "quarantined":
            self.quarantined.append(item)
            self.result.quarantined += 1
        else:
            self.result.failed += 1

    async def _settle(self) -> None:
        """Quarantined mail to the error folder, committed mail moved or deleted."""
        if self.quarantined:
            target = await self.ensure_error_folder() if self.ensure_error_folder else None
            if target is not None:
                await self._move_all(self.quarantined, target, "quarantined")
        if self.committed:
            done = await self._move_all(self.committed, self.folders.output_id, None)
            self.result.done = done

    async def _move_all(self, items: Sequence[str], target: str | None,
                        state: SettledState | None) -> int:  # fmt: skip
        """Move (target None: delete) `items` via $batch; mark what went in the ledger."""
        requests = [self._request(n, item, target) for n, item in enumerate(items)]
        answers = {}
        for start in range(0, len(requests), MOVE_BATCH):
            answers.update(await self.session.batch(requests[start : start + MOVE_BATCH]))
        settled: list[MailKey] = []
        for request, item in zip(requests, items, strict=True):
            status = answers[request.id].status
            if status < 300 or status == 404:  # 404: already moved (ledger says committed)
                settled.append(self.key(item))
            else:
                self.result.settle_failed.append(item)
                self.log.warning("move_failed", id=item[-12:], status=status)
        if settled:
            await self.store.mark_done(settled, _settled(target, state))
        return len(settled)

    def _request(self, number: int, item: str, target: str | None) -> BatchRequest:
        where = f"{self.session.base}/messages/{item}"
        if target is None:
            return BatchRequest(str(number + 1), "DELETE", where)
        return BatchRequest(str(number + 1), "POST", f"{where}/move", {"destinationId": target})


def _settled(target: str | None, state: SettledState | None) -> SettledState:
    """What the ledger records of mail taken to `target` (None: deleted)."""
    return state or ("moved" if target is not None else "deleted")


def received(stamp: object) -> dt.datetime | None:
    """A Graph ``receivedDateTime`` (ISO 8601, UTC) as an aware datetime; None if unreadable."""
    try:
        moment = dt.datetime.fromisoformat(str(stamp)) if stamp else None
    except ValueError:
        return None
    return moment if moment is None or moment.tzinfo else moment.replace(tzinfo=dt.UTC)


def _before(stamp: object, moment: dt.datetime) -> bool:
    """Whether a ``receivedDateTime`` is earlier than `moment` (unreadable: no)."""
    when = received(stamp)
    return when is not None and when < moment
