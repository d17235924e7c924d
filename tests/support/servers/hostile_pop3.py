"""A scripted POP3 server on loopback for the hostile-server tests, recording every byte.

It runs in its own thread with blocking sockets (the client under test, poplib, runs
in a worker thread too), answers a small POP3 (CAPA, USER/PASS, AUTH XOAUTH2, STAT,
LIST, UIDL, RETR, TOP, DELE, RSET, NOOP, QUIT) over a maildrop the test can change
between sessions, never offers STLS unless told, and can misbehave on RETR:

* ``endless``: an answer that never ends (fast);
* ``trickle``: one byte every ``trickle_every`` seconds;
* ``endless-line``: one line that never ends.

``received`` holds every byte any client sent, for "no password ever arrived" checks.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from types import TracebackType


@dataclass
class Mail:
    """One message in the maildrop; `listed_size` overrides the LIST size (a liar)."""

    uidl: str
    raw: bytes
    listed_size: int | None = None

    @property
    def size(self) -> int:
        return len(self.raw) if self.listed_size is None else self.listed_size


@dataclass
class HostilePop3:
    """The server; use as a context manager. `mails` may be replaced between sessions."""

    mails: list[Mail] = field(default_factory=list)
    offer_stls: bool = False  # advertised in CAPA; STLS itself is then answered -ERR
    retr: str = "normal"  # normal | endless | trickle | endless-line
    trickle_every: float = 0.5
    host: str = "127.0.0.1"
    received: bytearray = field(default_factory=bytearray)
    logins: int = 0
    port: int = 0

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._sock = socket.create_server((self.host, 0))
        self.port = self._sock.getsockname()[1]
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> HostilePop3:
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stopping.set()
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)  # wakes the accept
        self._sock.close()
        self._thread.join(5)

    def got(self) -> bytes:
        with self._lock:
            return bytes(self.received)

    def _serve(self) -> None:
        while not self._stopping.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._session, args=(conn,), daemon=True).start()

    def _session(self, conn: socket.socket) -> None:
        # OSError: the client gave up, which is the point of most tests.
        with conn, conn.makefile("rb") as rfile, contextlib.suppress(OSError):
            _Session(self, conn, rfile).run()

    def note(self, data: bytes) -> None:
        with self._lock:
            self.received += data


class _Session:
    def __init__(self, server: HostilePop3, conn: socket.socket, rfile: object) -> None:
        self.server, self.conn, self.rfile = server, conn, rfile
        self.mails = list(server.mails)  # numbers are fixed for the session (RFC 1939)
        self.deleted: set[int] = set()

    def send(self, *lines: bytes) -> None:
        self.conn.sendall(b"".join(line + b"\r\n" for line in lines))

    def readline(self) -> bytes:
        line: bytes = self.rfile.readline()  # type: ignore[attr-defined]
        self.server.note(line)
        return line

    def run(self) -> None:
        self.send(b"+OK hostile POP3 ready")
        while line := self.readline():
            verb, _, arg = line.strip().partition(b" ")
            handler = getattr(self, "do_" + verb.decode("ascii", "replace").lower(), None)
            if handler is None:
                self.send(b"-ERR unknown command")
            elif handler(arg) is False:
                return

    def do_capa(self, _arg: bytes) -> None:
        extra = [b"STLS"] if self.server.offer_stls else []
        self.send(b"+OK", b"USER", b"UIDL", b"TOP", b"SASL XOAUTH2", *extra, b".")

    def do_stls(self, _arg: bytes) -> None:
        self.send(b"-ERR TLS not available right now")

    def do_user(self, _arg: bytes) -> None:
        self.send(b"+OK")

    def do_pass(self, _arg: bytes) -> None:
        self.server.logins += 1
        self.send(b"+OK logged in")

    def do_auth(self, _arg: bytes) -> None:
        self.send(b"+ ")
        self.readline()
        self.server.logins += 1
        self.send(b"+OK logged in")

    def live(self) -> list[tuple[int, Mail]]:
        return [(n, m) for n, m in enumerate(self.mails, 1) if n not in self.deleted]

    def do_stat(self, _arg: bytes) -> None:
        live = self.live()
        self.send(b"+OK %d %d" % (len(live), sum(m.size for _, m in live)))

    def do_list(self, _arg: bytes) -> None:
        self.send(b"+OK", *(b"%d %d" % (n, m.size) for n, m in self.live()), b".")

    def do_uidl(self, _arg: bytes) -> None:
        self.send(b"+OK", *(b"%d %s" % (n, m.uidl.encode()) for n, m in self.live()), b".")

    def mail(self, arg: bytes) -> Mail | None:
        number = int(arg.split()[0]) if arg.split() and arg.split()[0].isdigit() else 0
        if not 0 < number <= len(self.mails) or number in self.deleted:
            self.send(b"-ERR no such message")
            return None
        return self.mails[number - 1]

    def do_retr(self, arg: bytes) -> bool | None:
        mail = self.mail(arg)
        if mail is None:
            return None
        mode = self.server.retr
        if mode == "normal":
            self.multiline(mail.raw)
            return None
        self.send(b"+OK here it comes")
        if mode == "trickle":
            for byte in itertools.cycle(b"Subject: slow\r\n"):
                self.conn.sendall(bytes([byte]))
                time.sleep(self.server.trickle_every)
        chunk = b"x" * 65536 if mode == "endless-line" else b"endless line\r\n" * 4096
        while True:
            self.conn.sendall(chunk)

    def do_top(self, arg: bytes) -> None:
        mail = self.mail(arg)
        if mail is not None:
            header, _, _ = mail.raw.partition(b"\r\n\r\n")
            self.multiline(header + b"\r\n\r\n")

    def multiline(self, raw: bytes) -> None:
        lines = [b"." + x if x.startswith(b".") else x for x in raw.split(b"\r\n")]
        if lines and lines[-1] == b"":
            lines.pop()
        self.send(b"+OK", *lines, b".")

    def do_dele(self, arg: bytes) -> None:
        if self.mail(arg) is not None:
            self.deleted.add(int(arg))
            self.send(b"+OK deleted")

    def do_rset(self, _arg: bytes) -> None:
        self.deleted.clear()
        self.send(b"+OK")

    def do_noop(self, _arg: bytes) -> None:
        self.send(b"+OK")

    def do_quit(self, _arg: bytes) -> bool:
        gone = {id(self.mails[n - 1]) for n in self.deleted}
        with self.server._lock:
            self.server.mails = [m for m in self.server.mails if id(m) not in gone]
        self.send(b"+OK bye")
        return False


class PeakRss:
    """Samples this process's resident memory every few ms: `growth` is peak minus start."""

    def __init__(self) -> None:
        self.start = self.peak = _rss()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join(2)

    def _sample(self) -> None:
        while not self._done.wait(0.005):
            self.peak = max(self.peak, _rss())

    @property
    def growth(self) -> int:
        return max(self.peak, _rss()) - self.start


def _rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
