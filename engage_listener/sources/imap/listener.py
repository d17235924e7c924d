"""One IMAP listener: connect, take the backlog, then batch new mail as it arrives.

A batch starts when pending changes reach SyncMaxChangesCount, or when
SyncMaxWaitTime has passed since the first pending change. Changes are counted
from the server's EXISTS/EXPUNGE pushes (IDLE, or NOOP polling where there is no
IDLE). Errors never escape `run`: transient ones back off with jitter, permanent
ones (login refused, folder missing) are reported and retried slowly. The round itself
(control, pause, reset, batch, wait) is `sources.batching`'s, shared with Graph.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from engage_listener.config.model import DEFAULT_MAX_ATTEMPTS, DEFAULT_MAX_MESSAGE_SIZE
from engage_listener.errors import FolderMissingError
from engage_listener.sources.batching import BatchingListener
from engage_listener.sources.imap.batch import Batch, BatchResult, Destination
from engage_listener.sources.imap.reset import reset_folder
from engage_listener.sources.imap.session import ImapSession
from engage_listener.sources.imap.text import FolderState, track_exists
from engage_listener.sources.listening import CONTROL_POLL

IDLE_REFRESH = 25 * 60.0  # RFC 2177: re-issue IDLE before the server's 30 minutes
POLL_INTERVAL = 15.0  # NOOP polling where the server has no IDLE


@dataclass(frozen=True)
class ListenerSettings:
    """What the loop needs from the listener's configuration."""

    id: str
    input_folder: str
    output_folder: str | None
    sync_max_wait_time: float  # seconds a change waits for its batch
    sync_max_changes_count: int  # changes that start a batch at once
    error_folder: str | None = None  # None: "Error" beside the input folder
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    read_from: dt.datetime | None = None  # ReadFromDate at 00:00 in the listener's zone
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE  # larger mail is quarantined unread


class Listener(BatchingListener[ListenerSettings, Callable[[], Awaitable[ImapSession]]]):
    """The batching loop of one listener; `run` for the daemon, `run_once` for cron/tests."""

    def _start(self) -> None:
        super()._start()
        self.error_folder = self.settings.error_folder or "Error"

    # ----- public ---------------------------------------------------------------------
    async def run(self) -> None:
        """Serve until `stop` is set; never raises (except cancellation)."""
        while not self.stop.is_set():
            try:
                session = await self._open()
            except Exception as exc:
                self.failures += 1
                await self._back_off(exc, self.failures)
                continue
            try:
                await self._serve(session)
            except Exception as exc:
                # Counted since the last completed batch, not the last login: a store
                # that stays broken must back off further each time, not every 2 s.
                self.failures += 1
                await self._back_off(exc, self.failures)
            finally:
                await session.logout()
        self.state = "stopped"
        self.log.info("listener_stopped")

    async def run_once(self) -> BatchResult:
        """Process the current backlog once and log out; errors propagate to the caller."""
        session = await self._open()
        try:
            folder = await self._select(session)
            return await self._one_round(
                lambda since: self._reset(session, folder, since),
                lambda reason: self._batch(session, folder, reason),
                BatchResult(),
            )
        finally:
            await session.logout()

    # ----- connection -----------------------------------------------------------------
    async def _open(self) -> ImapSession:
        self.state = "connecting"
        session = await self.connect()
        ep = session.endpoint
        self.log.info(
            "connected",
            host=ep.host,
            port=ep.port,
            tls=session.tls,
            idle=session.has_capability("IDLE"),
            move=session.has_capability("MOVE"),
        )
        return session

    async def _select(self, session: ImapSession) -> FolderState:
        folder = await session.select(self.settings.input_folder)
        if self.settings.error_folder is None:
            self.error_folder = sibling(
                self.settings.input_folder, await session.delimiter(), "Error"
            )
        out = self.settings.output_folder
        if out is not None and not await session.folder_exists(out):
            raise FolderMissingError(f"output folder {out!r} does not exist")
        return folder

    async def _serve(self, session: ImapSession) -> None:
        folder = await self._select(session)
        await self._rounds(
            lambda until: self._pause(session, until),
            lambda since: self._reset(session, folder, since),
            lambda reason: self._batch(session, folder, reason),
            lambda last: self._wait_for_trigger(session, folder, last),
        )

    async def _pause(self, session: ImapSession, until: dt.datetime) -> None:
        """`_wait_paused`, keeping the connection alive."""
        if not await self._wait_paused(until):
            await session.noop()  # keeps the connection alive through long pauses

    async def _reset(self, session: ImapSession, folder: FolderState, since: dt.datetime) -> None:
        """Re-examine mail received since `since`: the output folder now, the input folder
        through the next batch; whatever is already in the ledger is never ingested again.
        A mail that failed there below MaxAttempts leaves the reset pending: it is tried
        again at the next control check, after a normal batch (see `reset`)."""
        self.read_from_override = since
        out = self.settings.output_folder
        result = BatchResult()
        if out is not None:
            destination = Destination(
                None,
                self.error_folder,
                self.settings.max_attempts,
                max_message_size=self.settings.max_message_size,
            )
            result = await reset_folder(
                session, out, since, self.settings.id, self.store, self.handler,
                destination=destination, stop=self.stop, log=self.log,
            )  # fmt: skip
            await session.select(folder.name)
        await self._reset_done(since, result)

    # ----- batches --------------------------------------------------------------------
    async def _batch(self, session: ImapSession, folder: FolderState, reason: str) -> BatchResult:
        self.state = "processing"
        self.log.info("batch_start", reason=reason, exists=folder.exists, pending=self.pending)
        destination = Destination(
            self.settings.output_folder,
            self.error_folder,
            self.settings.max_attempts,
            self._read_from(),
            self.settings.max_message_size,
        )
        batch = Batch(
            session,
            folder,
            self.settings.id,
            self.store,
            self.handler,
            destination,
            self.stop,
            self.log,
        )
        result = await batch.run()
        self._batch_done(result)
        self.backlog = result.failed  # refreshed from the server while waiting
        self.log.info(
            "batch_end",
            reason=reason,
            found=result.found,
            ingested=result.ingested,
            already_known=result.already_known,
            failed=result.failed,
            quarantined=result.quarantined,
            moved=result.done if self.settings.output_folder else 0,
            deleted=0 if self.settings.output_folder else result.done,
            seconds=round(result.seconds, 3),
        )
        return result

    async def _leftover(self, session: ImapSession, last: BatchResult) -> tuple[int, int]:
        """(mails left from the last batch, mails that arrived after it started)."""
        # Every mail, \\Deleted ones too: the server's EXISTS counts them all.
        session.take_unsolicited()  # what came before this search is in its answer
        uids = await session.search("ALL", charset=None)
        new = sum(1 for uid in uids if uid > last.max_uid)
        # Mail that arrived while the search ran is announced by an EXISTS with its answer,
        # and never again: counted here, or it would wait for the next mail.
        new += max(0, track_exists(len(uids), session.take_unsolicited()) - len(uids))
        self.oldest_unprocessed = None
        if uids:  # for `status`: how long the oldest mail has been waiting
            self.oldest_unprocessed = (await session.fetch_meta([uids[0]])).get(uids[0], (0, None))[
                1
            ]
        return len(uids) - new, new

    async def _wait_for_trigger(
        self, session: ImapSession, folder: FolderState, last: BatchResult
    ) -> str | None:
        """Wait until the count or the time trigger fires; None when stopping."""
        baseline, self.pending = await self._leftover(session, last)
        self.backlog = baseline + self.pending
        exists = baseline + self.pending
        # Mails that failed and wait for another attempt count as a change, so they are
        # retried after SyncMaxWaitTime even when no new mail arrives.
        first_change = self.clock.now() if self.pending or last.failed else None
        idle = session.has_capability("IDLE")
        self.state = "idle"
        next_control = self.clock.now() + CONTROL_POLL
        while True:
            if self.pending >= self.settings.sync_max_changes_count:
                return "count"
            if first_change is not None and (
                self.clock.now() - first_change >= self.settings.sync_max_wait_time
            ):
                return "timeout"
            if self.clock.now() >= next_control:
                next_control = self.clock.now() + CONTROL_POLL
                control = await self._control()
                if control.paused_until or control.reset_from:
                    return "control"
            lines = await self._next_changes(session, idle, first_change, next_control)
            if lines is None:
                return None
            self.last_success_at = time.time()
            exists = track_exists(exists, lines)
            baseline = min(baseline, exists)
            self.pending = exists - baseline
            self.backlog = exists
            folder.exists = exists
            if self.pending and first_change is None:
                first_change = self.clock.now()
                self.log.info("change_pending", pending=self.pending)

    async def _next_changes(
        self, session: ImapSession, idle: bool, first_change: float | None, next_control: float
    ) -> list[bytes] | None:
        """One wait: lines pushed by the server ([] on a timer), or None when stopping."""
        timeout = min(IDLE_REFRESH if idle else POLL_INTERVAL, next_control - self.clock.now())
        if first_change is not None:
            deadline = first_change + self.settings.sync_max_wait_time - self.clock.now()
            timeout = max(0.0, min(timeout, deadline))
        if not idle:
            if await self._sleep(timeout):
                return None
            return await session.noop()
        await session.idle_start()
        try:
            lines = await self._race_push(session, timeout)
        except BaseException:
            session.abort()  # unusable now; `run` reconnects (or is being cancelled)
            raise
        tail = await session.idle_done()
        return None if lines is None else lines + tail

    async def _race_push(self, session: ImapSession, timeout: float) -> list[bytes] | None:
        push = asyncio.ensure_future(session.idle_push())
        timer = asyncio.ensure_future(self.clock.sleep(timeout))
        stop = asyncio.ensure_future(self.stop.wait())
        try:
            await asyncio.wait({push, timer, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (push, timer, stop):
                if not task.done():
                    task.cancel()
        if push.done() and not push.cancelled():
            return push.result()  # raises ConnectionLostError if the connection dropped
        if stop.done():
            return None
        return []


def sibling(folder: str, delimiter: str | None, name: str) -> str:
    """`name` beside `folder` in the hierarchy ("IMAP/New" -> "IMAP/Error")."""
    if not delimiter or delimiter not in folder:
        return name
    return folder.rsplit(delimiter, 1)[0] + delimiter + name
