"""Fakes for the clock (and later hooks); never for IMAP or SMTP, which run for real."""

from __future__ import annotations

import asyncio
import datetime as dt


class FakeClock:
    """A clock that only moves when the test says so."""

    def __init__(self) -> None:
        self._now = 1000.0
        self.start = dt.datetime.now(dt.UTC)
        self._sleepers: list[tuple[float, asyncio.Future[None]]] = []

    def now(self) -> float:
        return self._now

    def wall(self) -> dt.datetime:
        """Wall time moves with the fake clock, from a fixed start."""
        return self.start + dt.timedelta(seconds=self._now - 1000.0)

    async def sleep(self, seconds: float) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._sleepers.append((self._now + max(0.0, seconds), future))
        try:
            await future
        finally:
            self._sleepers = [(d, f) for d, f in self._sleepers if f is not future]

    @property
    def sleepers(self) -> int:
        return sum(1 for _, f in self._sleepers if not f.done())

    def advance(self, seconds: float) -> None:
        """Move time forward and wake every sleeper whose deadline has passed."""
        self._now += seconds
        for deadline, future in self._sleepers:
            if deadline <= self._now and not future.done():
                future.set_result(None)
