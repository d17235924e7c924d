"""What every source's listener holds, whatever its protocol: its settings, how it
connects, the store, the per-mail handler, the clock, the stop event and the log, and
the state `status` reads (state, batches, pause, last success, backlog, last error).

Decisions:

* A module of `sources` that no source owns: `imap`, `pop3` and `graph` stay independent
  of each other (an import-linter contract) and each import only this (and `batching`,
  `endpoint`, also owned by none).
* Each listener says what else it keeps in `_start` (called last by `__init__`), so the
  constructor's parameters, which every caller (`service.build`, tests) passes by name,
  are written once.
* Operator control is the same for every source: a pause (`reset` to a future day) is
  waited out a CONTROL_POLL at a time (`_wait_paused`), `run_once` takes nothing while
  paused (`_control_once`); what a date reset re-examines is each source's own.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Generic, Protocol, TypeVar

from engage_listener.clock import Clock
from engage_listener.intake.contract import Handler
from engage_listener.intake.control import Control, read_control
from engage_listener.intake.retry import Retrying
from engage_listener.observe.logs import Logger
from engage_listener.store.interface import Store

CONTROL_POLL = 60.0  # how often a waiting listener looks for `reset`/`resume` requests


class _Settings(Protocol):
    @property
    def id(self) -> str: ...


SettingsT = TypeVar("SettingsT", bound=_Settings)
ConnectT = TypeVar("ConnectT")


class SourceListener(Retrying, Generic[SettingsT, ConnectT]):
    """The state of one listener (see the module); `run` and `run_once` are its own."""

    def __init__(
        self,
        settings: SettingsT,
        *,
        connect: ConnectT,
        store: Store,
        handler: Handler,
        clock: Clock,
        stop: asyncio.Event,
        log: Logger,
    ) -> None:
        self.settings = settings
        self.connect = connect
        self.store = store
        self.handler = handler
        self.clock = clock
        self.stop = stop
        self.log = log
        self.state = "starting"
        self.batches = 0
        self.paused_until: dt.datetime | None = None
        # Wall time the listener last did its work: a batch, or a round the server
        # answered (so a quiet mailbox is not taken for a stuck listener).
        self.last_success_at: float | None = None
        self.backlog: int | None = None  # mails left on the server after the last batch
        self.last_error: str | None = None
        self._start()

    def _start(self) -> None:
        """The listener's own state, besides the above."""

    async def _control(self) -> Control:
        """The pause and date reset operators ask of this listener now."""
        return await read_control(self.store, self.settings.id, self.clock.wall())

    async def _control_once(self) -> Control | None:
        """`_control` for `run_once`: None while paused (said, and nothing is taken)."""
        control = await self._control()
        if control.paused_until is None:
            return control
        self.paused_until, self.state = control.paused_until, "paused"
        self.log.info("paused", until=control.paused_until.isoformat())
        return None

    async def _wait_paused(self, until: dt.datetime) -> bool:
        """Take no mail until `until` (or a `resume`), checking back every CONTROL_POLL;
        True when `stop` was set meanwhile."""
        if self.paused_until != until:
            self.log.info("paused", until=until.isoformat())
        self.paused_until, self.state = until, "paused"
        left = (until - self.clock.wall()).total_seconds()
        return await self._sleep(max(0.0, min(left, CONTROL_POLL)))
