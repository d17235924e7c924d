"""Time as a dependency.

The listener waits for SyncMaxWaitTime (60..600 s), IDLE refreshes and back-off
delays. Taking the clock as an argument lets tests drive those waits with a fake
clock instead of sleeping for minutes.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from typing import Protocol


class Clock(Protocol):
    """Monotonic time plus a sleep that honours it."""

    def now(self) -> float:
        """Seconds on a monotonic scale (only differences matter)."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Return once `seconds` have passed on this clock."""
        ...

    def wall(self) -> dt.datetime:
        """The current date and time (aware), for pauses and date resets."""
        ...


class SystemClock:
    """The real clock: `time.monotonic` and `asyncio.sleep`."""

    def now(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))

    def wall(self) -> dt.datetime:
        return dt.datetime.now(dt.UTC)
