"""One parse worker (see parse_pool): the process, a fresh interpreter running `serve`,
and the daemon's handle on it (`Worker`, `take_answer`).

Mails go in on the worker's stdin, answers come out on its stdout, one per mail, in the
mails' order; each a header then its body. In: `HEAD` (strip, size) then the mail; out:
`SIZE` then the pickled `Prepared` (or a string: why not). The worker imports this module
and the parser only, nothing of the daemon (no asyncio, no store).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import pickle
import select
import struct
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from engage_listener.mail import parser
from engage_listener.mail.automatic import automatic_reason
from engage_listener.mail.reply import new_text

HEAD = struct.Struct(">?Q")  # strip, size of the mail that follows
SIZE = struct.Struct(">Q")  # size of the pickled answer that follows
_READ_BUFFER = 1 << 20  # several small mails come in one read
PIPE_SIZE = 1 << 20  # Linux's default pipe-max-size
KILL_WAIT = 5.0  # seconds to reap a killed worker
START_WAIT = 60.0  # seconds for a new worker to say it is ready


class WorkerDied(RuntimeError):
    """The worker process ended while parsing (killed from outside, out of memory)."""


@dataclass(frozen=True)
class Prepared:
    """What a mail's bytes alone give, no store needed: parsed, hashed, judged automatic,
    and its new text (what the sender wrote above the quoted history: mail.reply)."""

    mail: parser.ParsedMail
    sha256: str
    automatic: str | None  # why it is automatic mail (auto-reply, bounce), or None
    new_text: str = ""


def prepare_mail(raw: bytes, strip: bool) -> Prepared:
    """Parse, hash, judge and cut one mail (in a worker, or in-process with Workers 0)."""
    mail = parser.parse(raw, strip=strip)
    sender = mail.sender.address if mail.sender else ""
    automatic = automatic_reason(mail.headers, sender, mail.headers.get("content-type", ""))
    return Prepared(mail, hashlib.sha256(raw).hexdigest(), automatic, new_text(mail.text))


def code_token() -> bytes:
    """Names the code on both ends of the pipe: a worker started after an upgrade of the
    files (the daemon still running the old code) must not be trusted with the format."""
    digest = hashlib.sha256()
    here = Path(__file__).parent
    names = ("parse_pool", "parse_worker", "parser", "fields", "parts", "text", "tree")
    for name in (*names, "automatic", "reply"):
        try:
            digest.update((here / f"{name}.py").read_bytes())
        except OSError:
            digest.update(name.encode())
    return digest.hexdigest()[:16].encode()


HELLO = b"engage-parse " + code_token()  # a worker's first words


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


class Worker:
    """One worker process and the parent's ends of its pipes (its stdin and stdout), both
    non-blocking: every exchange has a deadline."""

    def __init__(self) -> None:
        command, env = _interpreter()
        self.process = subprocess.Popen(  # our own interpreter and module
            [*command, "-P", "-c", "from engage_listener.mail.parse_worker import serve; serve()"],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            bufsize=0,
            start_new_session=True,  # a Ctrl-C in a terminal is the daemon's to handle
        )
        assert self.process.stdin is not None and self.process.stdout is not None
        self.send, self.answers = self.process.stdin.fileno(), self.process.stdout.fileno()
        for fd in (self.send, self.answers):
            os.set_blocking(fd, False)
            # 1 MB instead of 64 kB: a mail and its answer cross in a few writes instead
            # of one process switch per 64 kB (the pool's main cost on 2 cores)
            with contextlib.suppress(OSError, AttributeError):
                fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        hello = self._hello()  # its start-up (an interpreter, imports) is no mail's budget
        if hello != HELLO:  # (read here at each start: the tests change it)
            self.kill()
            raise WorkerDied(
                "a parse worker did not start"
                if not hello.startswith(HELLO[:13])
                else "the parse worker runs other code than this daemon (upgraded?): restart it"
            )

    def _hello(self) -> bytes:
        hello, deadline = b"", time.monotonic() + START_WAIT
        while len(hello) < len(HELLO):
            if not select.select([self.answers], [], [], max(0, deadline - time.monotonic()))[0]:
                break
            with contextlib.suppress(BlockingIOError):
                got = os.read(self.answers, len(HELLO) - len(hello))
                if not got:
                    break
                hello += got
        return hello

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        """Stop the process now (SIGKILL: a stuck parse heeds nothing else for sure)."""
        try:
            self.process.kill()
            self.process.wait(KILL_WAIT)
        except (OSError, subprocess.TimeoutExpired):
            pass  # already gone; or the kernel reaps it later
        for pipe in (self.process.stdin, self.process.stdout):
            with contextlib.suppress(OSError):
                pipe.close()  # type: ignore[union-attr]


def serve() -> None:
    """The worker's loop: a flag and a mail in on stdin, the pickled Prepared (or why not)
    out on stdout, mail after mail; ends when stdin closes (the daemon ended or let it go).
    The daemon may have written the next mails already: they wait in the pipe and in our
    read buffer, so no round trip separates two parses."""
    source = open(0, "rb", buffering=_READ_BUFFER)  # noqa: SIM115 - for the process's life
    sink = os.dup(1)
    os.dup2(2, 1)  # nothing but answers may reach the pipe: stray output goes to stderr
    _write_all(sink, [HELLO])
    while True:
        head = source.read(HEAD.size)
        if len(head) < HEAD.size:
            return
        strip, size = HEAD.unpack(head)
        raw = source.read(size)
        if len(raw) < size:
            return
        try:
            answer: object = _unchanged_left_out(prepare_mail(raw, strip), raw)
        except BaseException as exc:  # reported to the parent, which decides
            answer = f"{type(exc).__name__}: {str(exc)[:200]}"
        del raw
        data = pickle.dumps(answer, protocol=pickle.HIGHEST_PROTOCOL)
        _write_all(sink, [SIZE.pack(len(data)), data])  # one write: one wake-up over there
        del data, answer


def _write_all(fd: int, pieces: list[bytes]) -> None:
    views = [memoryview(piece) for piece in pieces]
    while views:
        written = os.writev(fd, views)
        while views and written >= len(views[0]):
            written -= len(views.pop(0))
        if views:
            views[0] = views[0][written:]


def _unchanged_left_out(prepared: Prepared, raw: bytes) -> tuple[Prepared, bool]:
    """Most mails have nothing to strip: their stripped copy (the whole mail again) need
    not cross the pipe; True tells the parent to put its own bytes back (`take_answer`)."""
    same = prepared.mail.stripped is not None and prepared.mail.stripped == raw
    if same:  # (a fresh object nobody else holds: changed in place, no copy of the mail)
        object.__setattr__(prepared.mail, "stripped", None)
    return prepared, same


def take_answer(buffer: bytearray, raw: bytes) -> Prepared | RuntimeError | None:
    """(In the daemon.) The answer for the mail `raw` if all of it is in `buffer` (then
    taken out of it), None while it is still on its way; ValueError: the worker writes
    something else than answers."""
    if len(buffer) < SIZE.size:
        return None
    (size,) = SIZE.unpack_from(buffer)
    if size > 8 * len(raw) + (64 << 20):
        raise ValueError(f"an answer of {size} bytes announced for a mail of {len(raw)}")
    end = SIZE.size + size
    if len(buffer) < end:
        return None
    with memoryview(buffer) as view:
        answer = pickle.loads(view[SIZE.size : end])  # noqa: S301 - our own worker's
    del buffer[:end]
    if isinstance(answer, str):
        return RuntimeError(f"parse worker failed: {answer}")
    prepared, same = answer
    if not isinstance(prepared, Prepared):
        raise ValueError(f"an answer out of step: {type(prepared).__name__}")
    if same:  # put back what `_unchanged_left_out` took out (in our fresh copy)
        object.__setattr__(prepared.mail, "stripped", raw)
    return prepared
