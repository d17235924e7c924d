"""Parsing mails in worker processes, each mail within a time budget.

A mail is hostile input: whatever its parse costs, it must neither hold the event loop
(heartbeats, IDLE, the watchdog, every other listener live on it) nor run without end.
So every mail is prepared (parsed, hashed, judged automatic: what `CaseEngine.ingest`
needs of its bytes alone) in a worker process, and a worker that overruns its mail's
budget is killed and replaced; the mail is quarantined with reason ``parse-timeout``.

Decisions:
- Processes, not threads: CPU-bound Python in a thread cannot be stopped, and holds the
  GIL the event loop needs. A worker is a fresh interpreter (``python -P -c``) talking
  over its stdin and stdout: forking the daemon, which has threads, is unsafe, and
  multiprocessing's spawn and forkserver would import the daemon's main module again in
  every worker. A worker imports the parser only (~0.1 s to start, in a pool thread),
  and is replaced only after a timeout, a crash or a very big mail.
- One pool for the whole process (`shared`), its size WORKERS: each worker belongs to
  one thread of the pool's own small thread pool (not asyncio's default executor, which
  DNS lookups and hooks use), which sends it a mail, waits for the answer with the
  deadline, and kills it on overrun. The event loop only awaits a future; the bytes
  cross the pipe and are unpickled in that thread (releasing the GIL while they move).
- The budget is PARSE_SECONDS plus an allowance for size (PARSE_BYTES_PER_SECOND): a
  150 MB mail of attachments is legitimately slower than a 5 kB one, yet bounded too.
- A worker that dies (out of memory, a crash) is replaced; the mail gets a plain error,
  so the batch counts an attempt and quarantines it at MaxAttempts, as with any failure.
- After a mail of more than RECYCLE_BYTES its worker is replaced too: a process keeps the
  high-water mark of its heap, and a fresh one gives the memory back.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import os
import pickle
import select
import struct
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO

from engage_listener.errors import QuarantineNow
from engage_listener.mail import parser
from engage_listener.mail.automatic import automatic_reason

__all__ = [
    "PARSE_BYTES_PER_SECOND",
    "PARSE_SECONDS",
    "WORKERS",
    "ParsePool",
    "Prepared",
    "WorkerDied",
    "close_shared",
    "prepare_for_quarantine",
    "prepare_mail",
    "serve",
    "shared",
]

PARSE_SECONDS = 10.0  # each mail's budget, plus the allowance below
PARSE_BYTES_PER_SECOND = 8 * 1024 * 1024  # allowance for size: +1 s per 8 MB
# One core is left to the event loop and the store (and, on small machines, the mail
# server): on 2 cores one worker ingested 1,000 mails 15-25% faster than two (bench).
WORKERS = max(1, min(4, (os.cpu_count() or 2) - 1))
RECYCLE_BYTES = 32 * 1024 * 1024  # a worker that parsed a bigger mail is replaced
_KILL_WAIT = 5.0  # seconds to reap a killed worker
_START_WAIT = 60.0  # seconds for a new worker to say it is ready


@dataclass(frozen=True)
class Prepared:
    """What a mail's bytes alone give, no store needed: parsed, hashed, judged automatic."""

    mail: parser.ParsedMail
    sha256: str
    automatic: str | None  # why it is automatic mail (auto-reply, bounce), or None


class WorkerDied(RuntimeError):
    """The worker process ended while parsing (killed from outside, out of memory)."""


# TODO(issue 18): compute mail.reply.new_text here (the engine does it, see cases.engine).
def prepare_mail(raw: bytes, strip: bool) -> Prepared:
    """Parse, hash and judge one mail (in a worker, or in-process for the tests)."""
    mail = parser.parse(raw, strip=strip)
    sender = mail.sender.address if mail.sender else ""
    automatic = automatic_reason(mail.headers, sender, mail.headers.get("content-type", ""))
    return Prepared(mail, hashlib.sha256(raw).hexdigest(), automatic)


def budget_for(size: int) -> float:
    """Seconds a mail of `size` bytes may take (module constants read at each call, so
    tests can shrink them)."""
    return PARSE_SECONDS + size / PARSE_BYTES_PER_SECOND


async def prepare_for_quarantine(raw: bytes, strip: bool, reason: str) -> Prepared:
    """What a quarantined mail is kept with: parsed like any mail when that works within
    budget; a mail whose parse overran (or killed its worker) is kept unparsed, with the
    reason as its defect, instead of being given a second budget to overrun."""
    if not reason.startswith("parse-timeout"):
        try:
            return await shared().prepare(raw, strip)
        except (QuarantineNow, WorkerDied) as exc:
            reason = str(exc)
    digest = await asyncio.to_thread(_sha256, raw)  # 150 MB take ~0.3 s: not on the loop
    return Prepared(parser.unparsed(reason[:300]), digest, None)


def _sha256(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


class ParsePool:
    """Worker processes that prepare mails; see the module's Decisions."""

    def __init__(self, workers: int = WORKERS) -> None:
        self.workers = workers
        self._threads = ThreadPoolExecutor(workers, thread_name_prefix="parse")
        self._local = threading.local()
        self._lock = threading.Lock()
        self._workers: set[_Worker] = set()
        self._closed = False

    async def prepare(self, raw: bytes, strip: bool) -> Prepared:
        """The mail prepared by a worker. Raises QuarantineNow("parse-timeout: ...") when it
        overran its budget (the worker was killed), WorkerDied when the worker ended."""
        return await self.submit(raw, strip)

    def submit(self, raw: bytes, strip: bool) -> asyncio.Future[Prepared]:
        """Start preparing the mail now; its future (to await later, or to drop)."""
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._threads, self._run, raw, strip)
        future.add_done_callback(_retrieve)
        return future

    def warm_up(self) -> None:
        """Start every worker now (in the pool's threads), not at the first mail."""
        for _ in range(self.workers):
            self._threads.submit(self._worker)

    def close(self) -> None:
        """Kill the workers; what is in flight fails. Never blocks the caller for long."""
        with self._lock:
            self._closed = True
            workers, self._workers = list(self._workers), set()
        for worker in workers:
            worker.kill()
        self._threads.shutdown(wait=False, cancel_futures=True)

    # ----- in the pool's threads ------------------------------------------------------
    def _worker(self) -> _Worker:
        worker: _Worker | None = getattr(self._local, "worker", None)
        if worker is None or not worker.alive():
            worker = _Worker()
            with self._lock:
                if self._closed:
                    worker.kill()
                    raise WorkerDied("the parse pool is closed")
                self._workers.add(worker)
            self._local.worker = worker
        return worker

    def _retire(self, worker: _Worker) -> None:
        self._local.worker = None
        with self._lock:
            self._workers.discard(worker)
        worker.kill()

    def _run(self, raw: bytes, strip: bool) -> Prepared:
        budget = budget_for(len(raw))
        for attempt in (1, 2):  # a worker found dead (killed from outside): once more
            worker = self._worker()
            try:
                answer = worker.call(raw, strip, budget)
            except TimeoutError:
                self._retire(worker)
                raise QuarantineNow(
                    f"parse-timeout: not parsed within {budget:.1f} s ({len(raw)} bytes);"
                    " the parse was stopped"
                ) from None
            except (EOFError, OSError) as exc:
                self._retire(worker)
                if attempt == 2 or self._closed:
                    raise WorkerDied(f"parse worker ended: {type(exc).__name__}") from None
                continue
            except Exception as exc:  # an answer out of step: never use that pipe again
                self._retire(worker)
                raise WorkerDied(f"parse worker's answer unreadable: {exc}") from None
            if len(raw) > RECYCLE_BYTES:
                self._retire(worker)
            answer = _with_raw(answer, raw)
            if isinstance(answer, Prepared):
                return answer
            raise RuntimeError(f"parse worker failed: {answer}")
        raise AssertionError("unreachable")


def _interpreter() -> tuple[list[str], dict[str, str] | None]:
    """The interpreter running us, and the environment it needs to find our packages.

    Normally sys.executable. When our own user may not reach that path (a venv that links
    into root's home, the daemon run as nobody), the worker is started through
    /proc/self/exe, the binary already running, with our import path in PYTHONPATH.
    """
    if os.access(sys.executable, os.X_OK) or not os.path.exists("/proc/self/exe"):
        return [sys.executable], None
    path = os.pathsep.join(p for p in sys.path if p)
    return ["/proc/self/exe"], {**os.environ, "PYTHONPATH": path}


class _Worker:
    """One worker process and the parent's ends of its pipes (its stdin and stdout)."""

    def __init__(self) -> None:
        command, env = _interpreter()
        self.process = subprocess.Popen(  # our own interpreter and module
            [*command, "-P", "-c", _WORKER_MAIN],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            bufsize=0,
            start_new_session=True,  # a Ctrl-C in a terminal is the daemon's to handle
        )
        assert self.process.stdin is not None and self.process.stdout is not None
        self.send: IO[bytes] = self.process.stdin
        self.answers: IO[bytes] = self.process.stdout
        for pipe in (self.send, self.answers):
            os.set_blocking(pipe.fileno(), False)  # every exchange has a deadline
            _widen(pipe.fileno())
        # Its start-up (an interpreter, the parser's imports) is no mail's budget.
        try:
            hello = bytes(_receive(self.answers, len(_HELLO), time.monotonic() + _START_WAIT))
        except (EOFError, OSError):
            hello = b""
        if hello != _HELLO:
            self.kill()
            raise WorkerDied(
                "a parse worker did not start"
                if not hello.startswith(_HELLO[:13])
                else "the parse worker runs other code than this daemon (upgraded?): restart it"
            )

    def alive(self) -> bool:
        return self.process.poll() is None

    def call(self, raw: bytes, strip: bool, budget: float) -> object:
        """Send one mail, wait for its answer; TimeoutError past the budget. Any other
        error leaves the pipes in an unknown state: the caller must retire the worker."""
        deadline = time.monotonic() + budget
        _send(self.send, _HEAD.pack(strip, len(raw)), deadline)
        _send(self.send, raw, deadline)
        (size,) = _SIZE.unpack(_receive(self.answers, _SIZE.size, deadline))
        if size > 8 * len(raw) + (64 << 20):
            raise ValueError(f"an answer of {size} bytes announced for a mail of {len(raw)}")
        return pickle.loads(_receive(self.answers, size, deadline))  # noqa: S301 - our worker

    def kill(self) -> None:
        """Stop the process now (SIGKILL: a stuck parse heeds nothing else for sure)."""
        try:
            self.process.kill()
            self.process.wait(_KILL_WAIT)
        except (OSError, subprocess.TimeoutExpired):
            pass  # already gone; or the kernel reaps it later
        for pipe in (self.send, self.answers):
            with contextlib.suppress(OSError):
                pipe.close()


_HEAD = struct.Struct(">?Q")  # strip, size of the mail that follows
_SIZE = struct.Struct(">Q")  # size of the pickled answer that follows
_WORKER_MAIN = "from engage_listener.mail.parse_pool import serve; serve()"
_PIECE = 1 << 20  # bytes per write to a worker


_PIPE_SIZE = 1 << 20  # Linux's default pipe-max-size


def _widen(fd: int) -> None:
    """A 1 MB pipe instead of 64 kB: a mail and its answer then cross in a few writes
    instead of one process switch per 64 kB (the pool's main cost on 2 cores)."""
    with contextlib.suppress(OSError, AttributeError):
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, _PIPE_SIZE)


def _code_token() -> bytes:
    """Names the code on both ends of the pipe: a worker started after an upgrade of the
    files (the daemon still running the old code) must not be trusted with the format."""
    digest = hashlib.sha256()
    here = Path(__file__).parent
    for name in ("parse_pool", "parser", "fields", "parts", "text", "tree", "automatic"):
        try:
            digest.update((here / f"{name}.py").read_bytes())
        except OSError:
            digest.update(name.encode())
    return digest.hexdigest()[:16].encode()


_HELLO = b"engage-parse " + _code_token()  # a worker's first words


def _send(pipe: IO[bytes], data: bytes, deadline: float) -> None:
    """Write all of `data` to a non-blocking pipe by `deadline` (TimeoutError)."""
    view, fd = memoryview(data), pipe.fileno()
    while view:
        _wait(fd, deadline, write=True)
        try:
            view = view[os.write(fd, view[:_PIECE]) :]
        except BlockingIOError:
            continue


def _receive(pipe: IO[bytes], size: int, deadline: float) -> bytearray:
    """Read exactly `size` bytes from a non-blocking pipe by `deadline` (TimeoutError;
    EOFError when the worker ended)."""
    buffer = bytearray(size)
    view, got, fd = memoryview(buffer), 0, pipe.fileno()
    while got < size:
        _wait(fd, deadline, write=False)
        try:
            count = os.readv(fd, [view[got:]])
        except BlockingIOError:
            continue
        if not count:
            raise EOFError("the worker's pipe closed")
        got += count
    return buffer


def _wait(fd: int, deadline: float, *, write: bool) -> None:
    left = deadline - time.monotonic()
    ready = (
        select.select([], [fd], [], max(0.0, left))
        if write
        else select.select([fd], [], [], max(0.0, left))
    )
    if not ready[0] and not ready[1]:
        raise TimeoutError


def _read_exactly(pipe: IO[bytes], size: int) -> bytearray:
    buffer = bytearray(size)
    view, got = memoryview(buffer), 0
    while got < size:
        count = pipe.readinto(view[got:])  # type: ignore[attr-defined]
        if not count:
            raise EOFError("the pipe closed")
        got += count
    return buffer


def serve() -> None:
    """The worker's loop: a flag and a mail in on stdin, the pickled Prepared (or why not)
    out on stdout; ends when stdin closes (the daemon ended or let it go)."""
    source = open(0, "rb", buffering=0)  # noqa: SIM115 - for the process's life
    sink = open(os.dup(1), "wb", buffering=0)  # noqa: SIM115
    os.dup2(2, 1)  # nothing but answers may reach the pipe: stray output goes to stderr
    sink.write(_HELLO)
    while True:
        try:
            strip, size = _HEAD.unpack(_read_exactly(source, _HEAD.size))
            raw = bytes(_read_exactly(source, size))
        except (EOFError, OSError):
            return
        try:
            answer: object = _unchanged_left_out(prepare_mail(raw, strip), raw)
        except BaseException as exc:  # reported to the parent, which decides
            answer = f"{type(exc).__name__}: {str(exc)[:200]}"
        del raw
        data = pickle.dumps(answer, protocol=pickle.HIGHEST_PROTOCOL)
        sink.write(_SIZE.pack(len(data)))
        _write_all(sink, data)


def _unchanged_left_out(prepared: Prepared, raw: bytes) -> Prepared | _SameAsRaw:
    """Most mails have nothing to strip: their stripped copy (the whole mail again) need
    not cross the pipe; the parent puts its own bytes back (`_with_raw`)."""
    if prepared.mail.stripped is not None and prepared.mail.stripped == raw:
        return _SameAsRaw(replace(prepared, mail=replace(prepared.mail, stripped=None)))
    return prepared


def _with_raw(answer: object, raw: bytes) -> object:
    if isinstance(answer, _SameAsRaw):
        prepared = answer.prepared
        return replace(prepared, mail=replace(prepared.mail, stripped=raw))
    return answer


@dataclass(frozen=True)
class _SameAsRaw:
    """A Prepared whose mail's stripped copy is the raw mail itself."""

    prepared: Prepared


def _write_all(pipe: IO[bytes], data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[pipe.write(view) or 0 :]


def _retrieve(future: asyncio.Future[Prepared]) -> None:
    """A future nobody awaited (a batch that stopped) must not log 'never retrieved'."""
    if not future.cancelled():
        future.exception()


_shared: ParsePool | None = None
_shared_lock = threading.Lock()


def shared() -> ParsePool:
    """The process's pool, started on first use."""
    global _shared  # noqa: PLW0603 - one pool per process, by design
    with _shared_lock:
        if _shared is None:
            _shared = ParsePool()
        return _shared


def close_shared() -> None:
    """Kill the process's workers (at the daemon's exit); a later use starts new ones."""
    global _shared
    with _shared_lock:
        pool, _shared = _shared, None
    if pool is not None:
        pool.close()
