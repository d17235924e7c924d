"""One Microsoft Graph listener: the IMAP listener's cycle over HTTPS.

Connect (a `GraphSession`), resolve the folders, take the backlog, then batch new mail
as delta finds it: a batch starts when new mails reach SyncMaxChangesCount, or when
SyncMaxWaitTime has passed since the first of them, exactly as for IMAP; delta is asked
every PollSeconds (Graph has no push a contact centre behind a firewall can receive).
Errors never escape `run`: transient ones (throttling past its retries, 5xx, dropped
connections) back off with jitter, permanent ones (403 with its advice, a missing
folder) are reported and retried slowly, as for IMAP and POP3. The round itself
(control, pause, reset, batch, wait) is `sources.batching`'s, shared with IMAP.

Decisions:

* `reset --date` and `resume` work as for IMAP: a future day pauses intake until then; a
  past day re-examines the output folder from that day (`_reset`), and lowers ReadFromDate
  to it for the input folder.
* ReadFromDate as for IMAP: mail received before it stays in the input folder, unread; the
  batch still lists it (the folder listing is the truth), so it is counted and logged.
* Mail that failed and waits for another attempt counts as a change, so it is retried
  after SyncMaxWaitTime even when no new mail arrives (as IMAP does).
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

from engage_listener.config.model import DEFAULT_MAX_ATTEMPTS, DEFAULT_MAX_MESSAGE_SIZE
from engage_listener.sources.batching import BatchingListener
from engage_listener.sources.graph.batch import Folders, GraphBatch, GraphBatchResult, received
from engage_listener.sources.graph.delta import DeltaWatch
from engage_listener.sources.graph.folders import ensure_folder, resolve_folder, sibling
from engage_listener.sources.graph.http import GraphSession
from engage_listener.sources.listening import CONTROL_POLL


@dataclass(frozen=True)
class GraphSettings:
    """What the loop needs from the listener's configuration."""

    id: str
    input_folder: str
    output_folder: str | None  # None: processed mail is deleted (to Deleted Items)
    sync_max_wait_time: float  # seconds a change waits for its batch
    sync_max_changes_count: int  # changes that start a batch at once
    poll_seconds: float = 15.0  # seconds between two delta rounds
    error_folder: str | None = None  # None: "Error" beside the input folder
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    read_from: dt.datetime | None = None  # ReadFromDate at 00:00 in the listener's zone


class GraphListener(BatchingListener[GraphSettings, Callable[[], GraphSession]]):
    """The batching loop of one Graph listener; `run` for the daemon, `run_once` for cron."""

    def _start(self) -> None:
        super()._start()  # oldest_unprocessed: received, of the oldest left
        settings = self.settings
        self.error_folder = settings.error_folder or sibling(settings.input_folder, "Error")
        self._error_id: str | None = None  # the error folder's id, once looked up
        self._first_change: float | None = None  # when the first waiting change was seen
        self._reconciled = False  # the ledger's unsettled rows checked since connecting

    # ----- public ---------------------------------------------------------------------
    async def run(self) -> None:
        """Serve until `stop` is set; never raises (except cancellation)."""
        while not self.stop.is_set():
            try:
                async with self.connect() as session:
                    await self._serve(session)
            except Exception as exc:
                self.failures += 1
                await self._back_off(exc, self.failures)
        self.state = "stopped"
        self.log.info("listener_stopped")

    async def run_once(self) -> GraphBatchResult:
        """Process the current backlog once; errors propagate to the caller."""
        async with self.connect() as session:
            folders = await self._folders(session)
            return await self._one_round(
                lambda since: self._reset(session, folders, since),
                lambda reason: self._batch(session, folders, reason),
                GraphBatchResult(),
            )

    # ----- connection -----------------------------------------------------------------
    async def _folders(self, session: GraphSession) -> Folders:
        self.state = "connecting"
        self._reconciled = False  # a run before this connection may have left some
        input_id = await resolve_folder(session, self.settings.input_folder, "input folder")
        out = self.settings.output_folder
        output_id = await resolve_folder(session, out, "output folder") if out else None
        self.log.info("connected", protocol="graph", mailbox=session.mailbox,
                      endpoint=session.settings.endpoint)  # fmt: skip
        return Folders(input_id, output_id, self.error_folder)

    async def _serve(self, session: GraphSession) -> None:
        self._error_id = None  # looked up again on each connection
        folders = await self._folders(session)
        watch = DeltaWatch(session, folders.input_id)
        await watch.poll()  # the starting point; the first batch takes the backlog
        await self._rounds(
            self._wait_paused,
            lambda since: self._reset(session, folders, since),
            lambda reason: self._batch(session, folders, reason),
            lambda last: self._wait_for_trigger(watch, last),
        )

    # ----- batches --------------------------------------------------------------------
    async def _batch(self, session: GraphSession, folders: Folders,
                     reason: str) -> GraphBatchResult:  # fmt: skip
        self.state = "processing"
        self.log.info("batch_start", reason=reason, pending=self.pending)

        batch = self._new_batch(session, folders)
        result = await batch.run(reconcile=not self._reconciled)
        self._reconciled = True
        self._batch_done(result)
        self.backlog = result.failed + len(result.settle_failed)
        self.oldest_unprocessed = received(result.oldest) if self.backlog else None
        moved = result.done if self.settings.output_folder else 0
        fields = asdict(result)
        fields.pop("settle_failed")
        fields.pop("oldest")
        fields.pop("done")
        fields["seconds"] = round(result.seconds, 3)
        self.log.info("batch_end", reason=reason, moved=moved,
                      deleted=result.done - moved, **fields)  # fmt: skip
        return result

    def _new_batch(self, session: GraphSession, folders: Folders) -> GraphBatch:
        async def error_folder() -> str:
            if self._error_id is None:
                self._error_id, created = await ensure_folder(session, self.error_folder)
                if created:
                    self.log.info("folder_created", folder=self.error_folder)
            return self._error_id

        return GraphBatch(
            session, folders, self.settings.id, self.store, self.handler,
            max_attempts=self.settings.max_attempts,
            max_message_size=self.settings.max_message_size,
            stop=self.stop, log=self.log, ensure_error_folder=error_folder,
            read_from=self._read_from(),
        )  # fmt: skip

    async def _reset(self, session: GraphSession, folders: Folders, since: dt.datetime) -> None:
        """Re-examine mail received since `since`: the output folder now (what the ledger
        lacks is ingested and stays there), the input folder through the next batch (which
        takes all of it anyway). A mail that failed below MaxAttempts leaves the reset
        pending, tried again at the next control check, as for IMAP. ReadFromDate is
        lowered to `since`, so the input folder's older mail is taken too."""
        self.read_from_override = since
        result = GraphBatchResult()
        if folders.output_id is not None:
            batch = self._new_batch(session, folders)
            result = await batch.run_in_place(await batch.listing(folders.output_id, since))
        await self._reset_done(since, result)

    async def _wait_for_trigger(self, watch: DeltaWatch, last: GraphBatchResult) -> str | None:
        """Wait until the count or the time trigger fires; None when stopping."""
        retry = last.failed or last.settle_failed
        self._first_change = self.clock.now() if retry else None
        self.state = "idle"
        next_control = self.clock.now() + CONTROL_POLL
        while True:
            fired = self._fired()
            if fired is not None:
                return fired
            now = self.clock.now()
            if now >= next_control:
                next_control = now + CONTROL_POLL
                control = await self._control()
                if control.paused_until is not None or control.reset_from is not None:
                    return "control"
            wait = min(self.settings.poll_seconds, next_control - now)
            if self._first_change is not None:
                wait = min(wait, self._first_change + self.settings.sync_max_wait_time - now)
            if await self._sleep(max(0.0, wait)):
                return None
            found = await watch.poll()
            self.last_success_at = time.time()
            if found.resync:
                self.log.warning("delta_resync", new=found.new)
                return "resync"
            self._count_new(found.new)

    def _fired(self) -> str | None:
        """ "count" or "timeout" when a trigger has fired, else None."""
        if self.pending >= self.settings.sync_max_changes_count:
            return "count"
        first = self._first_change
        if first is not None and self.clock.now() - first >= self.settings.sync_max_wait_time:
            return "timeout"
        return None

    def _count_new(self, new: int) -> None:
        """Mail delta found: pending changes, backlog, how long the oldest has waited."""
        self.pending += new
        self.backlog = (self.backlog or 0) + new
        if new and self.oldest_unprocessed is None:  # waiting since it was seen
            self.oldest_unprocessed = self.clock.wall()
        if self.pending and self._first_change is None:
            self._first_change = self.clock.now()
            self.log.info("change_pending", pending=self.pending)
