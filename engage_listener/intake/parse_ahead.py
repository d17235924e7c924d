"""Starting the parse of a batch's next mails before the batch reaches them."""

from __future__ import annotations

import asyncio
import weakref
from collections import deque
from typing import Protocol

AHEAD_COUNT = 64  # mails parsed ahead of the one being ingested, at most
AHEAD_BYTES = 8 * 1024 * 1024  # and their raw size, at most
# and the raw size held ahead by all the listeners of the process (of one event loop): with
# 20 listeners the per-listener bounds alone let the daemon reach 354 MiB (bench, issue 19)
AHEAD_TOTAL_BYTES = 16 * 1024 * 1024

_held_by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, int] = (
    weakref.WeakKeyDictionary()
)
_aheads_by_loop: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, weakref.WeakSet[ParseAhead]
] = weakref.WeakKeyDictionary()  # woken when one of them releases bytes


class Preparer(Protocol):
    def prepare(self, raw: bytes) -> object:
        """The part of ingesting a mail that needs no store (parsing), or a future of it
        (the case engine's: a parse worker's); None: nothing to do ahead. An error here is
        left to `ingest`, which meets it again; one in the future, `ingest` awaits."""
        ...


class ParseAhead:
    """Prepares (parses) the next mails whenever the event loop is free: the case engine's
    `prepare` hands a mail to a parse worker process and returns its future at once, so
    the workers parse while the batch commits the mails before. Parsing is a good part of
    a mail's work and needs no store. At most AHEAD_COUNT mails or AHEAD_BYTES are held
    prepared or in the making, and all listeners together AHEAD_TOTAL_BYTES (each may
    always hold one mail); what it has not started, `ingest` does itself. Mails are
    fed and taken in the same order; what `close` drops is cancelled if not started."""

    def __init__(self, handler: Preparer) -> None:
        self._handler = handler
        self._pending: deque[tuple[int, bytes]] = deque()
        self._done: dict[int, tuple[object, bytes]] = {}
        self._taken: set[int] = set()
        self._held = 0  # bytes of the mails in _done
        self._loop: asyncio.AbstractEventLoop | None = None  # whose total _held counts in
        self._wake = asyncio.Event()
        self._task: asyncio.Future[None] | None = None
        self._closed = False

    def feed(self, bodies: list[tuple[int, bytes]]) -> None:
        if self._closed:
            return  # a fetch that ended after the batch did
        self._pending.extend(bodies)
        if self._task is None:
            self._task = asyncio.ensure_future(self._run())
        self._wake.set()

    async def _run(self) -> None:
        self._loop = asyncio.get_running_loop()
        _aheads_by_loop.setdefault(self._loop, weakref.WeakSet()).add(self)
        while True:
            while self._pending and self._pending[0][0] in self._taken:
                self._taken.discard(self._pending.popleft()[0])  # the batch got there first
            if not self._pending or self._full(len(self._pending[0][1])):
                self._wake.clear()
                await self._wake.wait()
                continue
            uid, raw = self._pending.popleft()
            try:
                prepared = self._handler.prepare(raw)
            except Exception:  # noqa: S112 - `ingest` meets the same error and handles it
                continue
            self._done[uid] = (prepared, raw)
            self._hold(len(raw))
            await asyncio.sleep(0)  # one mail per turn of the loop

    def _full(self, size: int) -> bool:
        """A mail bigger than AHEAD_BYTES is prepared when nothing else is held."""
        if len(self._done) >= AHEAD_COUNT:
            return True
        total = _held_by_loop.get(asyncio.get_running_loop(), 0)
        return bool(self._done) and (
            self._held + size > AHEAD_BYTES or total + size > AHEAD_TOTAL_BYTES
        )

    def _hold(self, size: int) -> None:
        """Count `size` bytes (negative: released) here and in the process's total; a
        release wakes the other listeners' instances, which may be waiting for room."""
        if self._loop is None:
            return  # nothing was ever held
        self._held += size
        _held_by_loop[self._loop] = _held_by_loop.get(self._loop, 0) + size
        others = _aheads_by_loop.get(self._loop, ())
        if size < 0 and len(others) > 1:  # (alone, `take` woke this one already)
            for other in others:
                other._wake.set()

    def take(self, uid: int, raw: bytes) -> object:
        """What was prepared from exactly these bytes, or None; the mail is not prepared
        after this."""
        self._wake.set()
        found = self._done.pop(uid, None)
        if found is None:
            self._taken.add(uid)  # not reached yet: skip it (only those are remembered)
            return None
        prepared, fed = found
        self._hold(-len(fed))
        return prepared if fed is raw else None

    def close(self) -> None:
        self._closed = True
        if self._task is not None:
            self._task.cancel()
        self._pending.clear()
        for prepared, _ in self._done.values():
            if isinstance(prepared, asyncio.Future):
                prepared.cancel()  # a parse not started yet is not started at all
        self._done.clear()
        if self._held:
            self._hold(-self._held)
