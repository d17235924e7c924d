"""The process's one parse pool, shared by every listener (see parse_pool), and what a
quarantined mail is kept with.

Decisions: apart from `parse_pool` (the workers) for size. Sized by `configure` (the
daemon calls it with Process/Workers before the first mail); until then WORKERS, for tests
and one-off commands (approve, replay) that parse a few mails.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading

from engage_listener.mail import parser
from engage_listener.mail.parse_pool import ParsePool
from engage_listener.mail.parse_worker import Prepared

__all__ = ["WORKERS", "close_shared", "configure", "prepare_for_quarantine", "shared"]

WORKERS = 1


async def prepare_for_quarantine(raw: bytes, strip: bool, reason: str) -> Prepared:
    """What a quarantined mail is kept with: parsed like any mail when that works within
    budget; a mail whose parse overran (or killed its worker) is kept unparsed, with the
    reason as its defect, instead of being given a second budget to overrun."""
    if not reason.startswith("parse-timeout"):
        try:
            return await shared().prepare(raw, strip)
        except Exception as exc:  # overran, killed its worker, or raised (Workers 0)
            reason = str(exc)
    digest = await asyncio.to_thread(lambda: hashlib.sha256(raw).hexdigest())  # 150 MB: 0.3 s
    return Prepared(parser.unparsed(reason[:300]), digest, None)


_shared: ParsePool | None = None
_shared_lock = threading.Lock()


_size: int | None = None  # set by `configure`; None: WORKERS


def configure(workers: int) -> None:
    """Size the process's pool (Process/Workers); a pool already started with another
    size is closed, and the next use starts the new one."""
    global _size  # noqa: PLW0603 - one pool per process, by design
    with _shared_lock:
        _size = workers
        stale = _shared is not None and _shared.workers != workers
    if stale:
        close_shared()


def shared() -> ParsePool:
    """The process's pool, shared by every listener, started on first use."""
    global _shared  # noqa: PLW0603 - one pool per process, by design
    with _shared_lock:
        if _shared is None:
            _shared = ParsePool(WORKERS if _size is None else _size)
        return _shared


def close_shared() -> None:
    """Kill the process's workers (at the daemon's exit); a later use starts new ones."""
    global _shared
    with _shared_lock:
        pool, _shared = _shared, None
    if pool is not None:
        pool.close()
