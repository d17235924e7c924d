"""A real SMTP server on loopback for the tests: aiosmtpd, TLS from a private CA.

Mocks of SMTP would not catch what matters here (STARTTLS ordering, certificate
checks, AUTH only over TLS, reply codes), so the tests talk to aiosmtpd. The
server runs in its own thread (aiosmtpd's ``Controller``) and records every
message; it can be told to refuse the next RCPT or DATA commands with a given
reply, e.g. ``"451 4.3.0 try later"`` or ``"550 5.1.1 no such user"``.

Modes:

* ``plain``: no TLS at all (AUTH offered in clear, for ``Security=None``);
* ``ssl``: implicit TLS on the listening socket (port 465 style);
* ``starttls``: STARTTLS offered and required before MAIL and AUTH.

With a ``token_validator`` (e.g. the test identity provider's ``valid``), AUTH
XOAUTH2 is offered too and answered like Gmail and Exchange: an empty 334
challenge, then 235, or a base64 JSON error challenge followed by 535.
"""

from __future__ import annotations

import base64
import itertools
import json
import socket
import ssl
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from types import TracebackType
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import MISSING, AuthResult, LoginPassword

from devkit.certs import write_certs
from engage_listener.outbox.smtp import SmtpEndpoint

MODES = {"plain": "None", "ssl": "SSL", "starttls": "StartTls"}


@dataclass(frozen=True)
class Received:
    """One accepted message: envelope, raw bytes, and how the session was secured."""

    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    tls: bool
    login: str | None

    @property
    def message(self) -> EmailMessage:
        """The message parsed back with the modern policy (decoded headers)."""
        return message_from_bytes(self.data, policy=policy.default)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _Handler:
    """aiosmtpd handler: records messages, answers queued failures first."""

    def __init__(self, offer_auth: bool) -> None:
        self.offer_auth = offer_auth
        self.messages: list[Received] = []
        self.rcpt_failures: deque[str] = deque()
        self.data_failures: deque[str] = deque()
        self.lock = threading.Lock()
        self._ids = itertools.count(1)

    def _next_failure(self, queue: deque[str]) -> str | None:
        with self.lock:
            return queue.popleft() if queue else None

    async def handle_EHLO(self, server: Any, session: Any, envelope: Any, hostname: str,
                          responses: list[str]) -> list[str]:  # fmt: skip
        """aiosmtpd always lists AUTH; a server without AUTH must not."""
        session.host_name = hostname
        return [r for r in responses if self.offer_auth or not r.startswith("250-AUTH")]

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,
                          rcpt_options: list[str]) -> str:  # fmt: skip
        failure = self._next_failure(self.rcpt_failures)
        if failure is not None:
            return failure
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        failure = self._next_failure(self.data_failures)
        if failure is not None:
            return failure
        auth = session.auth_data
        login = auth.login.decode() if isinstance(auth, LoginPassword) else None
        tls = server.transport.get_extra_info("ssl_object") is not None
        received = Received(envelope.mail_from, list(envelope.rcpt_tos),
                            bytes(envelope.original_content), tls, login)  # fmt: skip
        with self.lock:
            self.messages.append(received)
            number = next(self._ids)
        return f"250 2.0.0 Ok: queued as TEST{number:04d}"


class _OAuthHandler(_Handler):
    """Also speaks AUTH XOAUTH2, checking each token with `validator(user, token)`."""

    def __init__(self, offer_auth: bool, validator: Callable[[str, str], bool]) -> None:
        super().__init__(offer_auth)
        self.validator = validator
        self.xoauth2_attempts: list[str] = []

    async def auth_XOAUTH2(self, server: Any, args: list[str]) -> AuthResult:
        blob = base64.b64decode(args[1]) if len(args) > 1 else await server.challenge_auth("")
        if blob is MISSING:
            return AuthResult(success=False, handled=True)
        fields = dict(
            part.split("=", 1) for part in blob.decode().split("\x01") if "=" in part
        )  # fmt: skip
        user, token = fields.get("user", ""), fields.get("auth", "").removeprefix("Bearer ")
        with self.lock:
            self.xoauth2_attempts.append(user)
        if self.validator(user, token):
            return AuthResult(success=True, auth_data=LoginPassword(user.encode(), b""))
        error = json.dumps({"status": "401", "schemes": "bearer", "scope": "mail"})
        await server.challenge_auth(error)  # the client answers with an empty line
        return AuthResult(success=False, handled=False)


class SmtpTestServer:
    """aiosmtpd on 127.0.0.1 and a free port, in one of :data:`MODES`."""

    host = "127.0.0.1"
    USER = "ack-sender"
    PASSWORD = "pässword-123-secret"

    def __init__(
        self,
        directory: Path,
        mode: str = "starttls",
        *,
        auth: bool = True,
        token_validator: Callable[[str, str], bool] | None = None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {sorted(MODES)}")
        self.mode, self.auth = mode, auth
        self.ca_file, cert_file, key_file = write_certs(Path(directory))
        self.port = _free_port()
        self.handler: _Handler = (
            _OAuthHandler(auth, token_validator) if token_validator else _Handler(offer_auth=auth)
        )
        server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server_tls.load_cert_chain(cert_file, key_file)
        self._controller = Controller(
            self.handler, hostname=self.host, port=self.port, server_hostname="localhost",
            **self._kwargs(server_tls),
        )  # fmt: skip

    def _kwargs(self, server_tls: ssl.SSLContext) -> dict[str, Any]:
        """Controller/SMTP options for the mode; AUTH needs TLS only where TLS exists."""
        kwargs: dict[str, Any] = {"auth_require_tls": self.mode == "starttls"}
        if self.auth:
            kwargs["authenticator"] = self._authenticate
        if self.mode == "ssl":
            kwargs["ssl_context"] = server_tls
        elif self.mode == "starttls":
            kwargs.update(tls_context=server_tls, require_starttls=True)
        return kwargs

    def _authenticate(self, server: Any, session: Any, envelope: Any, mechanism: str,
                      auth_data: Any) -> AuthResult:  # fmt: skip
        ok = isinstance(auth_data, LoginPassword) and (
            auth_data.login == self.USER.encode() and auth_data.password == self.PASSWORD.encode()
        )
        return AuthResult(success=ok, handled=False, auth_data=auth_data if ok else None)

    @property
    def messages(self) -> list[Received]:
        with self.handler.lock:
            return list(self.handler.messages)

    def fail_next_data(self, reply: str, count: int = 1) -> None:
        """Answer the next ``count`` DATA commands with ``reply`` (e.g. ``451 4.3.0 later``)."""
        with self.handler.lock:
            self.handler.data_failures.extend([reply] * count)

    def fail_next_rcpt(self, reply: str, count: int = 1) -> None:
        """Answer the next ``count`` RCPT commands with ``reply``."""
        with self.handler.lock:
            self.handler.rcpt_failures.extend([reply] * count)

    def endpoint(self, **changes: Any) -> SmtpEndpoint:
        """An endpoint that reaches this server with valid credentials and the CA."""
        values: dict[str, Any] = {
            "host": self.host, "port": self.port, "security": MODES[self.mode],
            "username": self.USER if self.auth else None,
            "password": self.PASSWORD if self.auth else None,
            "ca_file": str(self.ca_file), "timeout": 10.0, "local_hostname": "client.test",
            "allow_plaintext_login": self.mode == "plain",  # AUTH in clear only here
        }  # fmt: skip
        values.update(changes)
        return SmtpEndpoint(**values)

    def start(self) -> SmtpTestServer:
        self._controller.start()
        return self

    def stop(self) -> None:
        self._controller.stop()

    def __enter__(self) -> SmtpTestServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:  # fmt: skip
        self.stop()
