"""The parse pool's jobs and how their answers reach the awaiting event loops; and the
in-process path (Workers 0).

Decisions: apart from `parse_pool` (the workers, their threads and budgets) for size;
nothing here knows of worker processes (`cpu_idle` is what the pool grows on). The
pool's tunables stay in `parse_pool` (tests shrink them there), so `in_process` is given
INLINE_BYTES rather than reading it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from dataclasses import dataclass

from engage_listener.mail.parse_worker import Prepared, prepare_mail

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass(eq=False)
class Job:
    """A mail to prepare, and the future its answer goes to (on its event loop)."""

    raw: bytes
    strip: bool
    future: asyncio.Future[Prepared]
    loop: asyncio.AbstractEventLoop
    deaths: int = 0  # workers that ended with it at their head
    deadline: float = 0.0  # while at a worker's head: by when its answer is due


def settle(outcomes: list[tuple[Job, object]]) -> None:
    """Hand answers (a Prepared, or the exception to raise) to their futures, one wake-up
    per event loop."""
    loops: dict[asyncio.AbstractEventLoop, list[tuple[Job, object]]] = {}
    for job, outcome in outcomes:
        loops.setdefault(job.loop, []).append((job, outcome))
    for loop, some in loops.items():
        with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits
            loop.call_soon_threadsafe(_set, some)


def _set(outcomes: list[tuple[Job, object]]) -> None:
    for job, outcome in outcomes:
        if job.future.done():
            continue  # dropped meanwhile
        if isinstance(outcome, BaseException):
            job.future.set_exception(outcome)
        else:
            job.future.set_result(outcome)  # type: ignore[arg-type]


def in_process(
    loop: asyncio.AbstractEventLoop, raw: bytes, strip: bool, inline_bytes: int
) -> asyncio.Future[Prepared]:
    """Workers 0: the mail prepared here, on the loop up to `inline_bytes`, else in a
    thread (the caller passes its INLINE_BYTES, read at each call)."""
    if len(raw) > inline_bytes:
        future: asyncio.Future[Prepared] = asyncio.ensure_future(
            asyncio.to_thread(prepare_mail, raw, strip)
        )
    else:
        future = loop.create_future()
        try:
            future.set_result(prepare_mail(raw, strip))
        except Exception as exc:  # the batch counts it against the mail, as a worker's
            future.set_exception(exc)
    future.add_done_callback(retrieve)
    return future


def retrieve(future: asyncio.Future[Prepared]) -> None:
    """A future nobody awaited (a batch that stopped) must not log 'never retrieved'."""
    if not future.cancelled():
        future.exception()


def cpu_idle() -> float | None:
    """Seconds all CPUs have been idle since boot (Linux's /proc/stat), None elsewhere."""
    try:
        with open("/proc/stat", "rb") as stat:
            fields = stat.readline().split()
        return (int(fields[4]) + int(fields[5])) / _TICK  # idle, iowait
    except (OSError, ValueError, IndexError):
        return None
