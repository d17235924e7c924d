"""IMAP servers on loopback that misbehave exactly when the client logs in.

Each server speaks implicit TLS (a private CA, so the client verifies it for real
and no STARTTLS policy is involved), offers LOGIN and AUTHENTICATE XOAUTH2 with
SASL-IR, and answers the login command in one hostile way:

* ``wrong-tag``: a tagged OK with a tag the client never sent (aioimaplib raises
  an Abort whose text quotes the pending command: password or XOAUTH2 payload);
* ``bad``: ``BAD`` instead of OK or NO;
* ``drop``: the connection is closed as soon as the command arrives.

Every byte received (after TLS) is kept in `received`, for tests that want to
know what reached the server.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
from pathlib import Path
from typing import Literal

from devkit.certs import write_certs

Mode = Literal["wrong-tag", "bad", "drop"]
MODES: tuple[Mode, ...] = ("wrong-tag", "bad", "drop")
CAPABILITIES = b"IMAP4rev1 AUTH=XOAUTH2 SASL-IR"


class HostileLoginServer:
    """One misbehaving IMAP server; a context manager (it serves in a thread)."""

    host = "127.0.0.1"

    def __init__(self, directory: Path, mode: Mode) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.ca_file, cert_file, key_file = write_certs(directory)
        self.mode = mode
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.load_cert_chain(cert_file, key_file)
        self.listener = socket.create_server((self.host, 0))
        self.port = int(self.listener.getsockname()[1])
        self.received = bytearray()
        self.logins = 0  # login commands answered in the hostile way
        self.lock = threading.Lock()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._serve, name=f"hostile-{mode}", daemon=True)

    def __enter__(self) -> HostileLoginServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stopped.set()
        self.listener.close()
        self._thread.join(5)

    def _serve(self) -> None:
        self.listener.settimeout(0.2)
        while not self._stopped.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._session, args=(conn,), daemon=True).start()

    def _session(self, raw: socket.socket) -> None:
        with contextlib.suppress(OSError, ssl.SSLError), raw:
            raw.settimeout(10)
            conn = self.context.wrap_socket(raw, server_side=True)
            with conn:
                conn.sendall(b"* OK [CAPABILITY " + CAPABILITIES + b"] hostile IMAP ready\r\n")
                reader = conn.makefile("rb")
                for line in reader:
                    with self.lock:
                        self.received.extend(line)
                    if not self._answer(conn, line.rstrip(b"\r\n")):
                        return

    def _answer(self, conn: ssl.SSLSocket, line: bytes) -> bool:
        """Reply to one command line; False ends the session."""
        tag, _, rest = line.partition(b" ")
        command = rest.split(b" ", 1)[0].upper()
        if command == b"CAPABILITY":
            conn.sendall(b"* CAPABILITY " + CAPABILITIES + b"\r\n" + tag + b" OK done\r\n")
        elif command in (b"LOGIN", b"AUTHENTICATE"):
            with self.lock:
                self.logins += 1
            if self.mode == "drop":
                conn.shutdown(socket.SHUT_RDWR)
                return False
            if self.mode == "bad":
                conn.sendall(tag + b" BAD command not understood\r\n")
            else:
                conn.sendall(b"X" + tag + b" OK logged in\r\n")
        elif command == b"LOGOUT":
            conn.sendall(b"* BYE\r\n" + tag + b" OK bye\r\n")
            return False
        else:
            conn.sendall(tag + b" NO not here\r\n")
        return True
