"""One batch: take every mail in the input folder, commit each, then move them all.

The order is the exactly-once guarantee: a mail is moved (or deleted) on the
server only after its transaction committed, and a mail already in the ledger is
never ingested again, just moved on. A crash anywhere therefore leaves each mail
either still in the input folder (and in the ledger or not) or moved after commit.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from engage_listener.config.model import DEFAULT_MAX_ATTEMPTS
from engage_listener.errors import LeaseLost
from engage_listener.intake.contract import Delivered, Handled, Handler
from engage_listener.intake.parse_ahead import ParseAhead
from engage_listener.intake.per_mail import MailPath
from engage_listener.observe.logs import Logger
from engage_listener.sources.imap.session import ImapSession
from engage_listener.sources.imap.text import FolderState
from engage_listener.store.interface import MailKey, Store
from engage_listener.store.records import LedgerState, SettledState

CHUNK_COUNT = 100
FIRST_CHUNK_COUNT = 10
CHUNK_BYTES = 16 * 1024 * 1024
GROUP_SECONDS = 0.5  # a group commit holds the store no longer than about this


@dataclass(frozen=True)
class Destination:
    """Where mail goes: processed to a folder (None: deleted), failed to the error folder."""

    output_folder: str | None
    error_folder: str
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    read_from: dt.datetime | None = None  # mail received earlier is left where it is
    max_message_size: int | None = None  # larger mail: only its header is read, quarantined


@dataclass
class BatchResult:
    found: int = 0
    ingested: int = 0
    already_known: int = 0
    failed: int = 0
    quarantined: int = 0
    too_old: int = 0
    done: int = 0
    seconds: float = 0.0
    max_uid: int = 0
    failed_uids: list[int] = field(default_factory=list)


class _DeferredLog:
    """Holds log calls until the group they describe has committed."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, dict[str, Any]]] = []

    def __getattr__(self, level: str) -> Callable[..., None]:
        return lambda event, **fields: self.calls.append((level, event, fields))

    def replay(self, log: Logger) -> None:
        for level, event, fields in self.calls:
            getattr(log, level)(event, **fields)


def chunks(uids: Sequence[int], sizes: dict[int, int]) -> Iterator[list[int]]:
    """Group UIDs so one fetch holds at most CHUNK_COUNT mails or CHUNK_BYTES.

    A mail bigger than CHUNK_BYTES is fetched alone. The first chunks are smaller
    (FIRST_CHUNK_COUNT, doubling): work starts as soon as a few mails have arrived, while
    the next, bigger chunk is fetched.
    """
    chunk: list[int] = []
    total, limit = 0, FIRST_CHUNK_COUNT
    for uid in uids:
        size = sizes.get(uid, 0)
        if chunk and (len(chunk) >= limit or total + size > CHUNK_BYTES):
            yield chunk
            chunk, total, limit = [], 0, min(limit * 2, CHUNK_COUNT)
        chunk.append(uid)
        total += size
    if chunk:
        yield chunk


class Batch:
    """Processes the selected folder once; see the module docstring for the order."""

    def __init__(
        self,
        session: ImapSession,
        folder: FolderState,
        listener: str,
        store: Store,
        handler: Handler,
        destination: Destination,
        stop: asyncio.Event,
        log: Logger,
    ) -> None:
        self.session = session
        self.folder = folder
        self.listener = listener
        self.store = store
        self.handler = handler
        self.destination = destination
        self.stop = stop
        self.log = log
        self.result = BatchResult()
        self._committed: list[int] = []
        self._quarantined: list[int] = []
        self._too_old: set[int] = set()
        self._sizes: dict[int, int] = {}
        self._ahead = ParseAhead(handler)
        self.path = MailPath(
            store,
            handler,
            max_attempts=destination.max_attempts,
            log=log,
            quarantine_fields={"error_folder": destination.error_folder},
        )

    def _key(self, uid: int) -> MailKey:
        """IMAP's mail key: the folder, its UIDVALIDITY (the epoch) and the UID."""
        return MailKey(self.listener, self.folder.name, str(self.folder.uidvalidity), str(uid))

    async def _known(self, uids: Sequence[int]) -> dict[int, LedgerState]:
        known = await self.store.known_states(
            self.listener, self.folder.name, str(self.folder.uidvalidity), [str(u) for u in uids]
        )
        return {int(item): state for item, state in known.items()}

    async def run(self) -> BatchResult:
        started = time.monotonic()
        uids = await self.session.search_all()
        self.result.found = len(uids)
        self.result.max_uid = max(uids, default=0)
        try:
            if uids:
                meta = await self.session.fetch_meta(uids)
                self._too_old = self._older_than_read_from(meta)
                self.result.too_old = len(self._too_old)
                self._sizes = sizes = {uid: size for uid, (size, _) in meta.items()}
                todo = await self._without_oversize(await self._unknown(uids))
                await self._process_chunks(list(chunks(todo, sizes)))
        finally:
            # Even when the store failed mid-batch, what did commit is moved on.
            await self._finish()
            self.result.seconds = time.monotonic() - started
        return self.result

    async def run_in_place(self, uids: list[int], sizes: dict[int, int]) -> BatchResult:
        """Ingest `uids` as `run` does (chunks, attempts, quarantine) but leave committed
        mail where it is: `reset` re-examines the output folder, where processed mail
        already lives. Quarantined mail still goes to the error folder."""
        started = time.monotonic()
        self.result.found = len(uids)
        self._sizes = sizes
        try:
            todo = await self._without_oversize(await self._unknown(uids))
            await self._process_chunks(list(chunks(todo, sizes)))
        finally:
            if self._quarantined:
                await self._move_quarantined(sorted(set(self._quarantined)))
            self.result.seconds = time.monotonic() - started
        return self.result

    def _older_than_read_from(self, meta: dict[int, tuple[int, dt.datetime | None]]) -> set[int]:
        """UIDs received (server internal date) before ReadFromDate: never read."""
        since = self.destination.read_from
        if since is None:
            return set()
        return {uid for uid, (_, date) in meta.items() if date is not None and date < since}

    async def _unknown(self, uids: list[int]) -> list[int]:
        """UIDs to ingest; those already in the ledger (a crash before the move) only move."""
        known = await self._known(uids)
        for uid, state in known.items():
            (self._quarantined if state == "quarantined" else self._committed).append(uid)
        self.result.already_known += len(known)
        return [uid for uid in uids if uid not in known and uid not in self._too_old]

    async def _without_oversize(self, todo: list[int]) -> list[int]:
        """Quarantine mail over MaxMessageSize and return the rest.

        Decisions: such a mail is never fetched whole (a server could otherwise make us
        hold any amount); its header alone (`fetch_header_blocks`, itself capped) is kept
        as the quarantined raw, so `quarantine list/show` can tell the operator what it
        was, and it goes to the error folder with the batch's other quarantined mail.
        """
        cap = self.destination.max_message_size
        big = [uid for uid in todo if cap is not None and self._sizes.get(uid, 0) > cap]
        if not big:
            return todo
        heads = dict(await self.session.fetch_header_blocks(big))
        for uid in big:
            if self.stop.is_set():
                break
            reason = f"oversize: {self._sizes[uid]} bytes > MaxMessageSize {cap}"
            mail = Delivered(self._key(uid), heads.get(uid, b""), {"uid": uid})
            self._count(uid, await self.path.quarantine(mail, reason, 1))
        skip = set(big)
        return [uid for uid in todo if uid not in skip]

    def _fetch(self, chunk: list[int]) -> Awaitable[list[tuple[int, bytes]]]:
        return self.session.fetch_bodies(chunk, sum(self._sizes.get(uid, 0) for uid in chunk))

    async def _process_chunks(self, todo: list[list[int]]) -> None:
        """Each chunk is fetched while the one before is parsed and committed, so the
        server reads and sends while we work (at most two chunks are held)."""
        fetch: asyncio.Future[list[tuple[int, bytes]]] | None = None
        try:
            for number, chunk in enumerate(todo):
                if fetch is None:
                    bodies = await self._fetch(chunk)
                    self._ahead.feed(bodies)
                else:
                    bodies = await fetch  # fed to the parse-ahead on arrival
                fetch = None
                if self.stop.is_set():
                    return
                if number + 1 < len(todo):
                    fetch = asyncio.ensure_future(self._fetch(todo[number + 1]))
                    fetch.add_done_callback(self._feed_ahead)
                await self._process_bodies(bodies)
        finally:
            self._ahead.close()
            if fetch is not None:  # the session must be idle again before the move
                await asyncio.wait([fetch])
                if not fetch.cancelled():
                    fetch.exception()  # the error that ended the batch is the one to report

    def _feed_ahead(self, fetch: asyncio.Future[list[tuple[int, bytes]]]) -> None:
        if not fetch.cancelled() and fetch.exception() is None:
            self._ahead.feed(fetch.result())

    async def _process_bodies(self, bodies: list[tuple[int, bytes]]) -> None:
        rest = bodies
        while len(rest) > 1 and not self.stop.is_set():
            taken = await self._process_grouped(rest)
            if taken is None:
                break  # the store failed: mail by mail below, what can commit does
            rest = rest[taken:]
        for uid, raw in rest:
            if self.stop.is_set():
                return
            await self._process_one(uid, raw)

    async def _process_grouped(self, bodies: list[tuple[int, bytes]]) -> int | None:
        """Mails in one commit, as many as fit in GROUP_SECONDS (the group holds the
        store, which heartbeats, other listeners and the outbox wait for); each in its own
        savepoint, so one bad mail rolls back alone. Log lines and results count only once
        the group committed. Returns how many were taken; None when the group failed and
        nothing of it was kept. A lost lease (`LeaseLost`) is raised: this daemon moves
        no more mail of the listener, not even mail by mail."""
        saved = (len(self._committed), len(self._quarantined), dataclasses.replace(self.result))
        saved[2].failed_uids = list(self.result.failed_uids)
        log, deferred = self.log, _DeferredLog()
        # it answers every logging method a Logger has (by __getattr__), so it stands in
        self.log = self.path.log = cast(Logger, deferred)
        taken, started = 0, time.monotonic()
        try:
            async with self.store.group():
                for uid, raw in bodies:
                    if self.stop.is_set() or time.monotonic() - started >= GROUP_SECONDS:
                        break
                    await self._process_one(uid, raw)
                    taken += 1
        except BaseException as exc:
            del self._committed[saved[0] :], self._quarantined[saved[1] :]
            self.result = saved[2]
            if not isinstance(exc, Exception) or isinstance(exc, LeaseLost):
                raise  # cancellation and a lost lease propagate; any failure: mail by mail
            log.warning("group_commit_failed", error=str(exc), mails=len(bodies))
            return None
        finally:
            self.log = self.path.log = log
        deferred.replay(log)
        return taken

    async def _process_one(self, uid: int, raw: bytes) -> None:
        mail = Delivered(self._key(uid), raw, {"uid": uid}, self._ahead.take(uid, raw))
        self._count(uid, await self.path.take(mail))

    def _count(self, uid: int, handled: Handled) -> None:
        """Committed mail is moved at the batch's end, quarantined mail to the error
        folder; a failed one stays for the next batch."""
        if handled.outcome == "committed":
            self._committed.append(uid)
            self.result.ingested += 1
        elif handled.outcome == "quarantined":
            self._quarantined.append(uid)
            self.result.quarantined += 1
        else:
            self.result.failed += 1
            self.result.failed_uids.append(uid)

    async def _finish(self) -> None:
        """Move (or delete) every committed mail, quarantined ones to the error folder."""
        if self._quarantined:
            await self._move_quarantined(sorted(set(self._quarantined)))
        uids = sorted(set(self._committed))
        if not uids:
            return
        ours = await self._ours_left_flagged()
        if self.destination.output_folder is not None:
            flagged = await self.session.move(uids, self.destination.output_folder, ours)
            state: SettledState = "moved"
        else:
            flagged = await self.session.delete(uids, ours)
            state = "deleted"
        if flagged:
            self.log.warning(
                "left_flagged_deleted",
                count=flagged,
                why="the server has no UIDPLUS and other clients' \\Deleted mail is in the"
                " input folder: expunging would remove theirs too",
            )
        self.result.done = len(uids)
        await self.store.mark_done([self._key(uid) for uid in uids], state)

    async def _ours_left_flagged(self) -> set[int]:
        """Mails an earlier batch copied and left flagged \\Deleted (a server without
        UIDPLUS, another client's \\Deleted mail present then): an EXPUNGE may take them."""
        if self.session.has_capability("UIDPLUS"):
            return set()
        flagged = await self.session.search("DELETED", charset=None)
        known = await self._known(flagged)
        return {uid for uid, state in known.items() if state in ("moved", "deleted")}

    async def _move_quarantined(self, uids: list[int]) -> None:
        folder = self.destination.error_folder
        if not await self.session.folder_exists(folder):
            await self.session.create_folder(folder)
            self.log.info("folder_created", folder=folder)
        await self.session.move(uids, folder)
        await self.store.mark_done([self._key(uid) for uid in uids], "quarantined")
