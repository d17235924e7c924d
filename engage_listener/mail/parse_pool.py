"""Parsing mails in worker processes, each mail within a time budget.

A mail is hostile input: whatever its parse costs, it must neither hold the event loop
(heartbeats, IDLE, the watchdog, every other listener live on it) nor run without end.
So every mail is prepared (parsed, hashed, judged automatic: what `CaseEngine.ingest`
needs of its bytes alone) in a worker process (parse_worker), and a worker that overruns
its mail's budget is killed and replaced; the mail is quarantined ``parse-timeout``.

Decisions:
- Processes, not threads: CPU-bound Python in a thread cannot be stopped, and holds the
  GIL the event loop needs. A worker is a fresh interpreter (``python -P -c``) talking
  over its stdin and stdout (parse_worker): forking the daemon, which has threads, is
  unsafe, and multiprocessing's spawn and forkserver would import the daemon's main module
  again in every worker. It imports the parser only (~0.1 s to start, off the loop) and
  is replaced only after a timeout, a crash or a very big mail.
- One pool for the process (`parse_shared.shared`), shared by every listener, of up to
  `Process/Workers` workers (`configure`, before the first mail; default: one per CPU,
  config.model), each with a thread of its own
  (not asyncio's default executor, which DNS lookups and hooks use) that feeds it, reads
  and unpickles its answers (off the loop) and kills it on overrun. The loop only queues
  a mail and awaits its future; answers read together wake it once.
- Mails are streamed to a worker: its thread keeps up to DEPTH of them (FLIGHT_BYTES)
  written ahead of their answers, several per writev, and the worker takes the next one
  from its pipe as soon as it has written an answer. With one mail per exchange (issue
  14) the worker waited for the daemon between two mails (a thread hop, GIL hand-overs,
  four syscalls each way, on 2 cores shared with the loop, the store and the mail
  server): 10-20% less throughput than parsing on the loop. Streamed, a worker with
  mails waiting never waits for the daemon, and the throughput is that of before
  (bench/README.md, "Hardening"). The pool still costs CPU, ~0.4 ms a mail more than
  parsing in-process (pickling both ways, pipes, wake-ups), but off the loop's core.
- The budget stays per mail. A worker parses its mails in order, so the mail at the head
  of its queue is the one being parsed, since the answer before it came (or since it was
  sent, if later): its deadline is that moment plus PARSE_SECONDS plus an allowance for
  size (PARSE_BYTES_PER_SECOND: a 150 MB mail of attachments is legitimately slower than
  a 5 kB one, yet bounded too). On overrun only that mail is quarantined: the worker is
  killed, and the mails sent behind it go back to the front of the queue for the next
  worker (parsing has no side effects: a second parse is safe; nothing is lost).
- A worker that dies (out of memory, a crash) is replaced; the mail at its head is tried
  once more on a fresh one (the death may not be its doing: killed from outside), then
  gets WorkerDied, a plain error: the batch counts an attempt and quarantines it at
  MaxAttempts, as with any failure. The mails behind it go back to the queue, unblamed.
- After a mail of more than RECYCLE_BYTES its worker is replaced too: a process keeps the
  high-water mark of its heap, and a fresh one gives the memory back.
- Workers 0 parses in-process (the daemon's choice on a machine that cannot spare the
  memory of a process): on the event loop up to INLINE_BYTES, in a thread above, without a
  budget: CPU-bound Python in the daemon's process cannot be stopped.
- Workers start as they are needed, not all at once: one at start-up, and one more (up to
  Process/Workers) when the parse is what holds the batches back and the machine has a
  core to give it: over GROW_SECONDS of mails taken (`take`), the batches spent more than
  GROW_SHARE of the time waiting for answers, mails were queued that no worker had taken,
  and the CPUs were idle for at least one core's worth of that time (/proc/stat; assumed
  so where it cannot be read). On 2 cores shared with the mail server, where the event
  loop (store, routing, TLS) is the limit, a second worker only took CPU from the loop:
  0.89x Workers 1's msgs/s at 10,000 mails and 0.78x at 1,000, and ~35 MiB more
  (bench/README.md, "Workers as needed"); and a 16-core server held 16 idle processes.
  Neither a busy worker (one starved of CPU is busy, yet ahead of the batch) nor waiting
  alone (for each fetched chunk's first mails: ~20% of the time, one worker or two) says
  it. Workers are not stopped again.
- Pickle, in-band: out-of-band buffers would spare one copy of an answer's bytes each
  side (~10 us for the average 50 kB mail); marshal with the dataclasses rebuilt here
  measured slower (0.11 + 0.15 ms a mail against 0.10 + 0.10): building the objects is
  the cost, in any format.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import select
import threading
import time
from collections import deque

from engage_listener.errors import QuarantineNow
from engage_listener.mail.parse_jobs import Job, cpu_idle, in_process, retrieve, settle
from engage_listener.mail.parse_worker import (
    HEAD,
    Prepared,
    Worker,
    WorkerDied,
    prepare_mail,
    take_answer,
)

__all__ = [
    "PARSE_BYTES_PER_SECOND",
    "PARSE_SECONDS",
    "ParsePool",
    "Prepared",
    "WorkerDied",
    "prepare_mail",
]

PARSE_SECONDS = 10.0  # each mail's budget, plus the allowance below
PARSE_BYTES_PER_SECOND = 8 * 1024 * 1024  # allowance for size: +1 s per 8 MB
INLINE_BYTES = 1 << 20  # Workers 0: bigger mails are parsed in a thread, off the loop
DEPTH = 8  # mails sent to a worker ahead of their answers, at most
FLIGHT_BYTES = 4 << 20  # and their size (one bigger mail goes alone)
RECYCLE_BYTES = 32 * 1024 * 1024  # a worker that parsed a bigger mail is replaced
GROW_SECONDS = 2.0  # how often to look at how long the batches waited (while they take)
GROW_SHARE = 0.25  # waited more than this share of that time: one more worker, if
GROW_IDLE = 1.0  # the CPUs were idle at least this many cores' worth meanwhile
_CLOSED = "the parse pool is closed"


def budget_for(size: int) -> float:
    """Seconds a mail of `size` bytes may take (module constants read at each call, so
    tests can shrink them)."""
    return PARSE_SECONDS + size / PARSE_BYTES_PER_SECOND


class ParsePool:
    """Worker processes that prepare mails; see the module's Decisions."""

    def __init__(self, workers: int = 1) -> None:
        self.workers = workers
        self._lock = threading.Lock()  # guards _queue, _slots, _closed, Slot.hungry
        self._queue: deque[Job] = deque()  # not sent to any worker yet, in order
        self._slots: list[_Slot] = []  # replaced, never changed in place (read unlocked)
        self._closed = False
        self._window: tuple[float, float, float | None] = (0.0, 0.0, None)  # see `_waited`

    async def prepare(self, raw: bytes, strip: bool) -> Prepared:
        """The mail prepared by a worker. Raises QuarantineNow("parse-timeout: ...") when it
        overran its budget (the worker was killed), WorkerDied when the worker ended."""
        return await self.submit(raw, strip)

    def submit(self, raw: bytes, strip: bool) -> asyncio.Future[Prepared]:
        """Start preparing the mail now; its future (to await later, or to drop: one
        cancelled before a worker got it is not parsed at all)."""
        loop = asyncio.get_running_loop()
        if self.workers == 0:
            return in_process(loop, raw, strip, INLINE_BYTES)
        future: asyncio.Future[Prepared] = loop.create_future()
        future.add_done_callback(retrieve)
        with self._lock:
            if self._closed:
                future.set_exception(WorkerDied(_CLOSED))
                return future
            self._queue.append(Job(raw, strip, future, loop))
            self._start()
            self._wake_one()
        return future

    async def take(self, future: asyncio.Future[Prepared]) -> Prepared:
        """The answer of a mail sent ahead (`submit`), for the batch that reached it; how
        long the batch waited for it counts towards one more worker (see Decisions)."""
        if future.done():
            self._waited(0.0)
            return await future
        started = time.monotonic()
        try:
            return await future
        finally:
            self._waited(time.monotonic() - started)

    def _waited(self, seconds: float) -> None:  # on the event loop
        """Count a wait; every GROW_SECONDS, one more worker if the batches waited long,
        mails are queued and a core was idle (see Decisions). The window: (since, seconds
        waited, the CPUs' idle seconds then)."""
        since, waited, idle = self._window
        now = time.monotonic()
        if not since:  # the first window: the CPUs' idle time read once for it
            self._window = (now - seconds, seconds, cpu_idle())
            return
        if now - since < GROW_SECONDS:
            self._window = (since, waited + seconds, idle)
            return
        idle_now = cpu_idle()
        self._window = (now, 0.0, idle_now)
        if waited + seconds <= GROW_SHARE * (now - since):
            return
        spare = None if idle is None or idle_now is None else idle_now - idle
        if spare is not None and spare < GROW_IDLE * (now - since):
            return  # no core to spare: a worker more would take the event loop's
        with self._lock:
            if self._queue and len(self._slots) < self.workers and not self._closed:
                self._add()

    def warm_up(self) -> None:
        """Start the first worker now (in its thread), not at the first mail."""
        with self._lock:
            self._start()

    def close(self) -> None:
        """Kill the workers; what is queued or in flight fails. Never blocks the caller."""
        with self._lock:
            self._closed = True
            queued = list(self._queue)
            self._queue.clear()
            for slot in self._slots:
                slot.stop()
        settle([(job, WorkerDied(_CLOSED)) for job in queued])

    @property
    def _workers(self) -> set[Worker]:
        """The live worker processes (for the tests)."""
        return {slot.worker for slot in self._slots if slot.worker is not None}

    def _start(self) -> None:  # under _lock
        if not self._slots and not self._closed:
            self._add()

    def _add(self) -> None:  # under _lock
        slot = _Slot(self)
        self._slots = [*self._slots, slot]
        slot.thread.start()

    def _wake_one(self) -> None:  # under _lock
        for slot in self._slots:
            if slot.hungry:
                slot.hungry = False
                slot.wake()
                return

    def _requeue(self, jobs: list[Job]) -> None:
        """Mails taken back from a worker that is gone: first in line again, in order (or
        failed, once the pool is closed)."""
        for job in jobs:
            job.deadline = 0.0
        with self._lock:
            if not self._closed:
                self._queue.extendleft(reversed(jobs))
                for _ in jobs:
                    self._wake_one()
                return
        settle([(job, WorkerDied(_CLOSED)) for job in jobs])


class _Slot:
    """One worker process and the thread that feeds it, reads its answers and stops it."""

    def __init__(self, pool: ParsePool) -> None:
        self.pool = pool
        self.worker: Worker | None = None
        self.hungry = False  # (under the pool's lock) wants a wake-up for a new mail
        self.flight: deque[Job] = deque()  # sent (or being sent), answers due in order
        self.out: deque[memoryview] = deque()  # what is still to write to the worker
        self.answers = bytearray()  # read from the worker, not yet a whole answer
        self._scratch = memoryview(bytearray(1 << 20))  # a full pipe
        self._wake_r, self._wake_w = os.pipe()
        for fd in (self._wake_r, self._wake_w):
            os.set_blocking(fd, False)
        self.thread = threading.Thread(target=self._run, name="parse", daemon=True)

    def wake(self) -> None:  # under the pool's lock
        with contextlib.suppress(OSError):  # full: it is awake anyway
            if self._wake_w >= 0:
                os.write(self._wake_w, b"\0")

    def stop(self) -> None:  # under the pool's lock, which is closed: the thread reaps it
        worker = self.worker
        if worker is not None:
            with contextlib.suppress(OSError):
                worker.process.kill()
        self.wake()

    def _run(self) -> None:
        with contextlib.suppress(Exception):
            self._worker()  # started at once: warm_up, or the first mail
        try:
            while not self.pool._closed:
                try:
                    self._turn()
                except WorkerDied as exc:  # one did not start
                    self._fail_head(exc)
                except Exception as exc:  # an answer out of step: never use that pipe again
                    self._fail_head(WorkerDied(f"parse worker's answer unreadable: {exc!r}"))
        finally:
            self._retire()  # the pool is closed: what was in flight fails
            with self.pool._lock:
                os.close(self._wake_r)
                os.close(self._wake_w)
                self._wake_w = -1

    def _turn(self) -> None:
        """Send what fits, wait for answers (or the head's deadline, or a new mail), hand
        the answers over."""
        if not self.flight and self.worker is not None and not self.worker.alive():
            self._retire()  # ended while idle (killed from outside): no mail's doing
        with self.pool._lock:
            if self.pool._closed:
                return
            self._top_up(self.pool._queue)
            self.hungry = len(self.flight) < 2  # the worker may soon run dry: wake us
        if not self.flight:
            select.select([self._wake_r], [], [])
            self._drained()
            return
        worker, head = self._worker(), self.flight[0]
        if not head.deadline:
            head.deadline = time.monotonic() + budget_for(len(head.raw))
        try:
            if self.out:
                self._write(worker)
            left = max(0.0, head.deadline - time.monotonic())
            wait = [worker.send] if self.out else []
            ready, _, _ = select.select([worker.answers, self._wake_r], wait, [], left)
            if self._wake_r in ready:
                self._drained()
            if worker.answers in ready:
                self._read(worker)
        except (EOFError, OSError) as exc:
            self._ended(exc)
        if self.flight and time.monotonic() >= self.flight[0].deadline:
            size = len(self.flight[0].raw)
            reason = f"parse-timeout: not parsed within {budget_for(size):.1f} s ({size} bytes)"
            self._fail_head(QuarantineNow(reason + "; the parse was stopped"))

    def _fail_head(self, exc: Exception) -> None:
        """The head mail gets `exc` once its worker is killed and reaped (the mails sent
        behind it go back to the queue, for a new worker)."""
        head = self.flight.popleft() if self.flight else None
        self._retire()
        if head is not None:
            settle([(head, exc)])

    def _ended(self, exc: Exception) -> None:
        """The worker ended: its head mail is tried once more (the death may not be its
        doing: killed from outside), unless a worker ended with it at its head before."""
        if self.flight:
            self.flight[0].deaths += 1
            if self.flight[0].deaths >= 2 or self.pool._closed:
                self._fail_head(WorkerDied(f"parse worker ended: {type(exc).__name__}"))
                return
        self._retire()

    def _top_up(self, queue: deque[Job]) -> None:  # under the pool's lock
        size = sum(len(job.raw) for job in self.flight)
        while queue and len(self.flight) < DEPTH:
            if self.flight and size + len(queue[0].raw) > FLIGHT_BYTES:
                return
            job = queue.popleft()
            if job.future.cancelled():  # dropped before any worker got it
                continue
            self.flight.append(job)
            self.out += (memoryview(HEAD.pack(job.strip, len(job.raw))), memoryview(job.raw))
            size += len(job.raw)

    def _write(self, worker: Worker) -> None:
        try:
            written = os.writev(worker.send, list(itertools.islice(self.out, 64)))
        except BlockingIOError:
            return
        while written:
            first = self.out[0]
            if written < len(first):
                self.out[0] = first[written:]
                return
            written -= len(first)
            self.out.popleft()

    def _read(self, worker: Worker) -> None:
        """Take what the worker wrote; each whole answer settles its mail, at once."""
        count = os.readv(worker.answers, [self._scratch])
        if not count:
            raise EOFError("the worker's pipe closed")
        self.answers += self._scratch[:count]
        done: list[tuple[Job, object]] = []
        try:
            while self.answers:
                if not self.flight:
                    raise ValueError("an answer for no mail")
                answer = take_answer(self.answers, self.flight[0].raw)
                if answer is None:
                    break  # the rest is on its way
                job = self.flight.popleft()
                done.append((job, answer))
                if len(job.raw) > RECYCLE_BYTES:
                    self._retire()  # a fresh process gives the memory back
                elif self.flight:  # the next mail's parse starts now (if it has not yet)
                    self.flight[0].deadline = time.monotonic() + budget_for(len(self.flight[0].raw))
        finally:
            settle(done)

    def _worker(self) -> Worker:
        if self.worker is None:
            worker = Worker()  # raises WorkerDied when it does not start
            if self.pool._closed:
                worker.kill()
                raise WorkerDied(_CLOSED)
            self.worker = worker
        return self.worker

    def _retire(self) -> None:
        """Kill the worker; the mails still in flight go back to the pool's queue."""
        worker, self.worker = self.worker, None
        if worker is not None:
            worker.kill()
        self.out.clear()
        self.answers = bytearray()
        jobs = list(self.flight)
        self.flight.clear()
        if jobs:
            self.pool._requeue(jobs)

    def _drained(self) -> None:
        with contextlib.suppress(OSError):
            os.read(self._wake_r, 4096)
