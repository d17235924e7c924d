"""The one module that touches poplib: POP3 and POP3S sessions for the POP3 listener.

poplib blocks, so every call runs in the session's own worker thread with a socket
timeout: a hung server delays neither the event loop nor any other listener.
Every byte is read through `pop3_wire.BoundedReader` (caps on size and line length,
a deadline per command), and RETR and TOP bodies raw, so the bytes are exactly the
server's and lines over poplib's 2048-byte limit cannot make a mail unreadable
forever. Without implicit TLS the session must STLS: a server that offers no STLS, or
an upgrade that fails, is a TlsError before anything secret is sent, unless the
listener has AllowPlaintextLogin (then `tls` is "none" and the listener warns). Errors become
the package's: a refused login AuthenticationError, certificate problems TlsError,
other -ERR ProtocolError (the session stays usable), sockets and timeouts
ConnectionLostError (the session is then unusable: `healthy` is False).
With a token provider the login is SASL XOAUTH2 (RFC 5034, the response after the
server's empty challenge, as Microsoft documents it); a refused token is replaced
by a brand-new one once, on a new connection, before the refusal is reported.
"""

from __future__ import annotations

import asyncio
import hashlib
import poplib
import socket
import ssl
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from engage_listener.errors import AuthenticationError, ConnectionLostError, ProtocolError, TlsError
from engage_listener.oauth.provider import TokenRefused, xoauth2_error, xoauth2_payload
from engage_listener.observe.protolog import ProtocolLog
from engage_listener.sources.endpoint import MailEndpoint
from engage_listener.sources.pop3.wire import EOF, Pop3Conn, ReadLimits

if TYPE_CHECKING:
    pass

T = TypeVar("T")
_Conn = Pop3Conn  # the name this module's helpers (and tests) use
TEMPORARY_CODES = ("[IN-USE]", "[SYS/TEMP]")  # RFC 3206: a refusal worth retrying soon
ANSWER_MAX = 300  # characters of a server answer quoted in an error


@dataclass(frozen=True)
class Pop3Endpoint(MailEndpoint):
    """A POP3 server (see `MailEndpoint`), with the bounds on its answers."""

    limits: ReadLimits = field(default_factory=ReadLimits)


def _answer(exc: poplib.error_proto) -> str:
    arg = exc.args[0] if exc.args else ""
    text = arg.decode("utf-8", "replace") if isinstance(arg, bytes) else str(arg)
    return text[:ANSWER_MAX]


def _is_err(exc: poplib.error_proto) -> bool:
    """A clean -ERR answer: the command failed but the connection is still in step."""
    answer = _answer(exc)
    return answer.startswith("-ERR") and answer != EOF


@contextmanager
def _errors(what: str, handshake: bool = False) -> Iterator[None]:
    """poplib and socket exceptions -> the package's, saying what we were doing."""
    try:
        yield
    except poplib.error_proto as exc:
        if _is_err(exc):
            raise ProtocolError(f"{what}: the server answered {_answer(exc)}") from exc
        detail = "connection closed by the server" if _answer(exc) == EOF else _answer(exc)
        raise ConnectionLostError(f"{what}: {detail}") from exc
    except ssl.SSLError as exc:
        if not handshake:
            raise ConnectionLostError(f"{what}: {exc}") from exc
        trust = isinstance(exc, ssl.SSLCertVerificationError)
        problem = "TLS certificate not trusted" if trust else "TLS handshake failed"
        raise TlsError(f"{what}: {problem}: {exc}") from exc
    except OSError as exc:
        raise ConnectionLostError(f"{what}: {exc or 'timed out'}") from exc


def _connect(
    ep: Pop3Endpoint, protolog: ProtocolLog | None, token: str | None = None
) -> tuple[_Conn, str]:
    """Blocking: connect, TLS (implicit, or STLS when offered), USER/PASS or XOAUTH2."""
    context = ep.ssl_context()
    with _errors(f"connecting to {ep.where}", handshake=True):
        conn = _Conn(ep, context if ep.use_ssl else None, protolog)
    try:
        tls = "implicit" if ep.use_ssl else _starttls(conn, ep, context)
        if tls == "none" and not ep.allow_plaintext_login:
            raise TlsError(
                f"{ep.where}: server offered no STLS; refusing to send credentials in clear "
                "(AllowPlaintextLogin True allows it)"
            )
        if token is None:
            _login(conn, ep)
        else:
            _login_xoauth2(conn, ep, token)
    except BaseException:
        conn.shut()
        raise
    finally:
        if protolog is not None:
            protolog.flush()
    return conn, tls


def _starttls(conn: _Conn, ep: Pop3Endpoint, context: ssl.SSLContext) -> str:
    with _errors(f"CAPA on {ep.where}"):
        try:
            capabilities = conn.capa()
        except poplib.error_proto as exc:
            if not _is_err(exc):
                raise
            capabilities = {}  # a server without CAPA (RFC 2449) offers no STLS either
    if "STLS" not in capabilities:
        return "none"
    with _errors(f"STLS with {ep.where}", handshake=True):
        try:
            conn.stls(context)
        except poplib.error_proto as exc:  # offered, then refused: no quiet plain text
            raise TlsError(f"STLS with {ep.where} failed: {_answer(exc)}") from None
    if conn.protolog is not None:
        conn.protolog.note("STLS done")
    return "stls"


def _login(conn: _Conn, ep: Pop3Endpoint) -> None:
    who = f"{ep.username!r} on {ep.where}"
    with _errors(f"login as {who}"):
        try:
            conn.user(ep.username)
            conn.pass_(ep.password)
        except poplib.error_proto as exc:
            answer = _answer(exc)
            if _is_err(exc) and not any(code in answer for code in TEMPORARY_CODES):
                raise AuthenticationError(f"login refused for {who}: {answer}") from None
            raise


def _login_xoauth2(conn: _Conn, ep: Pop3Endpoint, token: str) -> None:
    """AUTH XOAUTH2, empty challenge, response; an error challenge is ended with an empty line."""
    who = f"{ep.username!r} on {ep.where}"
    with _errors(f"XOAUTH2 login as {who}"):
        conn._putcmd("AUTH XOAUTH2")
        line, _ = conn._getline()
        if line.startswith(b"+ ") or line == b"+":
            if conn.protolog is not None:
                conn.protolog.sent("***")  # the token never reaches the protocol log
            conn.sock.sendall(xoauth2_payload(ep.username, token).encode() + b"\r\n")
            line, _ = conn._getline()
            if line.startswith(b"+OK"):
                return
            detail = ""
            if line.startswith(b"+"):  # the error details; the empty answer gets the -ERR
                detail = f" ({xoauth2_error(line[1:])})"
                conn._putcmd("")
                line, _ = conn._getline()
        else:
            detail = " (the server offers no XOAUTH2 login)"
        answer = line.decode("utf-8", "replace")[:ANSWER_MAX]
        if not line.startswith(b"-ERR") or any(code in answer for code in TEMPORARY_CODES):
            raise poplib.error_proto(line)  # temporary or out of step: not a verdict on us
        raise TokenRefused(f"XOAUTH2 login refused for {who}: {answer}{detail}")


@dataclass(frozen=True)
class Listed:
    """One message the server lists: its number, UIDL and size (LIST, in octets)."""

    number: int
    uidl: str
    size: int


def _listing(conn: _Conn) -> tuple[list[Listed], bool]:
    """Blocking: the messages, and whether the server has UIDL at all."""
    try:
        _, lines, _ = conn.uidl()
    except poplib.error_proto as exc:
        if not _is_err(exc):
            raise
        uidls = None
    else:
        uidls = dict(_pair(line) for line in lines)
    _, lines, _ = conn.list()
    sizes = [_scan(line) for line in lines]
    if uidls is None:  # no UIDL (RFC 1939 makes it optional): the SHA-256 of each header
        return [Listed(n, "sha256:" + _header_hash(conn, n), size) for n, size in sizes], False
    return [Listed(n, uidls[n], size) for n, size in sizes if n in uidls], True


def _header_hash(conn: _Conn, number: int) -> str:
    return hashlib.sha256(conn.body(f"TOP {number} 0", conn._limits.header_max)).hexdigest()


def _scan(line: bytes) -> tuple[int, int]:
    """A LIST line, "number size" (RFC 1939 lets servers add more after them)."""
    parts = line.split()
    if len(parts) < 2 or not parts[0].isdigit() or not parts[1].isdigit():
        raise ProtocolError(f"malformed LIST line from the server: {line[:100]!r}")
    return int(parts[0]), int(parts[1])


def _pair(line: bytes) -> tuple[int, str]:
    parts = line.split()
    if len(parts) != 2 or not parts[0].isdigit():
        raise ProtocolError(f"malformed listing line from the server: {line[:100]!r}")
    return int(parts[0]), parts[1].decode("ascii", "backslashreplace")


class Pop3Session:
    """One logged-in POP3 connection. DELE takes effect only at QUIT (RFC 1939 UPDATE)."""

    def __init__(
        self, endpoint: Pop3Endpoint, conn: _Conn, tls: str, worker: ThreadPoolExecutor
    ) -> None:
        self.endpoint = endpoint
        self.tls = tls  # "implicit" | "stls" | "none"
        self.healthy = True  # False once the connection broke or a call was cancelled
        self.uidl_supported: bool | None = None  # known after list_uidls
        self._conn = conn
        self._worker = worker
        self._closed = False

    @classmethod
    async def open(cls, endpoint: Pop3Endpoint) -> Pop3Session:
        """Connect and log in; a cancelled open still closes the connection it made."""
        provider = endpoint.token_provider
        if provider is None:
            return await cls._open(endpoint, None)
        try:
            return await cls._open(endpoint, await provider.token())
        except TokenRefused:  # revoked or expired early: once more with a brand-new token
            token = await provider.token(force_refresh=True)
        try:
            return await cls._open(endpoint, token)
        except TokenRefused as exc:
            advice = getattr(provider, "refusal_advice", "")
            raise TokenRefused(f"{exc}. {advice}" if advice else str(exc)) from None

    @classmethod
    async def _open(cls, endpoint: Pop3Endpoint, token: str | None) -> Pop3Session:
        protolog = endpoint.protolog_factory()  # first: a ProtocolLogError leaves nothing open
        worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pop3")
        if protolog is not None:
            protolog.note(f"connecting to {endpoint.where} tls={endpoint.use_ssl}")
        job = worker.submit(_connect, endpoint, protolog, token)
        try:
            conn, tls = await asyncio.shield(asyncio.wrap_future(job))
        except asyncio.CancelledError:
            job.add_done_callback(lambda done: _discard(done, worker, protolog))
            raise
        except BaseException:
            _discard(job, worker, protolog)
            raise
        return cls(endpoint, conn, tls, worker)

    async def listing(self) -> list[Listed]:
        """Number, UIDL and size of each message; without UIDL the UIDL is "sha256:" + hex
        of its TOP n 0 header."""
        listing, self.uidl_supported = await self._call("UIDL", lambda: _listing(self._conn))
        return listing

    async def list_uidls(self) -> list[tuple[int, str]]:
        """(message number, UIDL) pairs of `listing`."""
        return [(m.number, m.uidl) for m in await self.listing()]

    async def retrieve(self, number: int, size: int = 0) -> bytes:
        """RETR: the message exactly as the server sends it (byte-stuffing undone); at most
        MaxMessageSize plus an allowance, within a deadline scaled to the listed `size`."""
        most = self.endpoint.max_message_size + self.endpoint.limits.size_allowance
        command = f"RETR {number}"
        return await self._call(command, lambda: self._conn.body(command, most, size))

    async def header(self, number: int) -> bytes:
        """TOP n 0: the message's header (and the empty line after it), as the server sends it."""
        most = self.endpoint.limits.header_max
        command = f"TOP {number} 0"
        return await self._call(command, lambda: self._conn.body(command, most))

    async def delete(self, number: int) -> None:
        """DELE: marks the message; the server removes it only at a successful QUIT."""
        await self._call(f"DELE {number}", lambda: self._conn.dele(number))

    async def quit(self) -> None:
        """QUIT, which commits the deletions; the session is closed either way."""
        try:
            await self._call("QUIT", self._conn.quit)
        finally:
            self.abort()

    def abort(self) -> None:
        """Close without QUIT (deletions are NOT committed); never blocks the loop."""
        self.healthy = False
        if self._closed:
            return
        self._closed = True
        sock = getattr(self._conn, "sock", None)
        if sock is not None:
            # Wake a worker blocked in recv; socket.socket's shutdown (not SSLSocket's)
            # leaves the TLS object alone while that thread may still be using it.
            with suppress(OSError):
                socket.socket.shutdown(sock, socket.SHUT_RDWR)
        self._worker.submit(_close_conn, self._conn)  # after any call still running
        self._worker.shutdown(wait=False)

    async def _call(self, what: str, fn: Callable[[], T]) -> T:
        if not self.healthy:
            raise ConnectionLostError(f"{what}: the connection to {self.endpoint.where} is closed")
        where = f"{what} on {self.endpoint.where}"
        job = self._worker.submit(_translated, where, self._conn, fn)
        try:
            return await asyncio.wrap_future(job)
        except ProtocolError:
            raise  # a clean -ERR: the connection is still in step
        except BaseException:
            self.healthy = False  # broken, or cancelled mid-command: out of step
            raise


def _translated(what: str, conn: _Conn, fn: Callable[[], T]) -> T:
    try:
        with _errors(what):
            return fn()
    finally:
        if conn.protolog is not None:
            conn.protolog.flush()  # once per command, not per line


def _close_conn(conn: _Conn) -> None:
    conn.shut()
    if conn.protolog is not None:
        conn.protolog.note("connection closed")
        conn.protolog.close()


def _discard(job: Future[Any], worker: ThreadPoolExecutor, log: ProtocolLog | None) -> None:
    """Close what a failed or abandoned open left behind."""
    if not job.cancelled() and job.exception() is None:
        _close_conn(job.result()[0])
    elif log is not None:
        log.close()
    worker.shutdown(wait=False)
