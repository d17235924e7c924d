"""The cycle the IMAP and Graph listeners share: a batch, then wait for the count or the
time trigger, operator control between two batches, and `run_once`'s one batch.

Each listener keeps what is its protocol's: how it connects and finds its folders, how a
batch takes and settles mail, how it waits for new mail (IDLE or NOOP, delta rounds), and
what a date reset re-examines. This module holds what they say alike: the order of a
round (control, pause, reset, batch, wait), the state a completed batch sets for `status`,
the `reset` log line, and ReadFromDate lowered by a reset.

Decisions:

* A module of `sources` that no source owns (see `listening`): `imap` and `graph` stay
  independent of each other and each import this.
* A round clears the pause before a pending date reset runs (the pause is over once
  control says so), then resets, then takes its batch.
* POP3 is not a batching listener: it polls, has no folders and no trigger to wait for,
  and keeps its date filter (`pop3.dates`) by the Date header.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

from engage_listener.intake.control import reset_done
from engage_listener.sources.listening import ConnectT, SourceListener


class _BatchSettings(Protocol):
    @property
    def id(self) -> str: ...

    @property
    def read_from(self) -> dt.datetime | None: ...


class Taken(Protocol):
    """What a batch reports that this cycle reads (IMAP's and Graph's batch results)."""

    @property
    def failed(self) -> int: ...

    @property
    def quarantined(self) -> int: ...

    @property
    def ingested(self) -> int: ...

    @property
    def too_old(self) -> int: ...


BatchSettingsT = TypeVar("BatchSettingsT", bound=_BatchSettings)
ResultT = TypeVar("ResultT", bound=Taken)


class BatchingListener(SourceListener[BatchSettingsT, ConnectT]):
    """A listener that takes its mail in batches (see the module)."""

    def _start(self) -> None:
        self.pending = 0  # changes seen since the last batch
        self.oldest_unprocessed: dt.datetime | None = None
        self.read_from_override: dt.datetime | None = None  # lowered by `reset --date`
        self.failures = 0  # errors in a row since the last completed batch
        self._too_old_logged = 0  # mail before ReadFromDate, said once, not every batch

    async def _rounds(
        self,
        pause: Callable[[dt.datetime], Awaitable[object]],
        reset: Callable[[dt.datetime], Awaitable[object]],
        batch: Callable[[str], Awaitable[ResultT]],
        wait: Callable[[ResultT], Awaitable[str | None]],
    ) -> None:
        """Batch after batch on one connection until `wait` says stop (None)."""
        reason: str | None = "startup backlog"
        while reason is not None and not self.stop.is_set():
            control = await self._control()
            if control.paused_until is not None:
                await pause(control.paused_until)
                reason = "resumed"
                continue
            self.paused_until = None
            if control.reset_from is not None:
                await reset(control.reset_from)
            reason = await wait(await batch(reason))

    async def _one_round(
        self,
        reset: Callable[[dt.datetime], Awaitable[object]],
        batch: Callable[[str], Awaitable[ResultT]],
        nothing: ResultT,
    ) -> ResultT:
        """`run_once`'s round: `nothing` while paused, else a pending reset and a batch."""
        control = await self._control_once()
        if control is None:
            return nothing
        if control.reset_from is not None:
            await reset(control.reset_from)
        return await batch("once")

    def _batch_done(self, result: Taken) -> None:
        """What a completed batch tells `status`; ReadFromDate's skipped mail said once."""
        if result.too_old != self._too_old_logged:
            self._too_old_logged = result.too_old
            self.log.info("mail_before_read_from", count=result.too_old,
                          read_from=str(self._read_from()))  # fmt: skip
        self.batches += 1
        self.failures = 0
        self.pending = 0
        self.last_error = None
        self.last_success_at = time.time()

    async def _reset_done(self, since: dt.datetime, result: Taken) -> None:
        """A date reset is done (and forgotten) unless a mail failed below MaxAttempts:
        then it stays pending, tried again at the next control check."""
        if not result.failed and not self.stop.is_set():
            await reset_done(self.store, self.settings.id, since)
        self.log.info("reset", since=since.isoformat(), output_folder_ingested=result.ingested,
                      quarantined=result.quarantined, to_retry=result.failed)  # fmt: skip

    def _read_from(self) -> dt.datetime | None:
        """ReadFromDate, lowered by a date reset to an earlier day."""
        configured, override = self.settings.read_from, self.read_from_override
        if configured is None or override is None:
            return configured
        return min(configured, override)
