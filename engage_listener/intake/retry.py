"""Waiting and backing off, shared by the IMAP and POP3 listeners.

Transient errors back off exponentially (2 s doubling to 5 minutes) with jitter so
that many listeners on one server do not reconnect in step; permanent ones (login
refused, folder missing, untrusted certificate) wait for an operator and are
retried slowly. Every wait races the stop event, so shutdown is never delayed.
"""

from __future__ import annotations

import asyncio
import random

from engage_listener.clock import Clock
from engage_listener.errors import PermanentError, TransientError
from engage_listener.observe.logs import Logger

BACKOFF_BASE = 2.0
BACKOFF_CAP = 300.0
PERMANENT_RETRY = 300.0


def backoff(exc: Exception, failures: int) -> tuple[float, str]:
    """(seconds to wait, kind of error) after `failures` failures in a row."""
    if isinstance(exc, PermanentError):
        return PERMANENT_RETRY, "permanent"
    delay = min(BACKOFF_CAP, BACKOFF_BASE * 2 ** min(failures - 1, 16))
    delay *= random.uniform(0.5, 1.0)  # noqa: S311 - jitter, not cryptography
    return delay, "transient" if isinstance(exc, TransientError) else "unexpected"


class Retrying:
    """Mixed into a listener: `_sleep` and `_back_off` on its clock, state and log."""

    clock: Clock
    stop: asyncio.Event
    state: str
    last_error: str | None
    log: Logger

    async def _sleep(self, seconds: float) -> bool:
        """Sleep on the clock; True when `stop` was set meanwhile."""
        timer = asyncio.ensure_future(self.clock.sleep(seconds))
        stop = asyncio.ensure_future(self.stop.wait())
        await asyncio.wait({timer, stop}, return_when=asyncio.FIRST_COMPLETED)
        timer.cancel()
        stop.cancel()
        return self.stop.is_set()

    async def _back_off(self, exc: Exception, failures: int) -> None:
        delay, kind = backoff(exc, failures)
        self.state = "failing" if kind == "permanent" else "backing off"
        self.last_error = str(exc)
        self.log.error(
            "listener_error",
            kind=kind,
            error=str(exc),
            error_type=type(exc).__name__,
            retry_in=round(delay, 1),
            failures=failures,
            **({"exc_info": exc} if kind == "unexpected" else {}),
        )
        await self._sleep(delay)
