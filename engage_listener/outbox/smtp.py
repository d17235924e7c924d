"""Sending one message over SMTP, with every failure sorted into retry or give up.

The only module that talks to aiosmtplib. The engine needs one question answered
per failure: try again later (:class:`SmtpTemporaryError`, 4xx and network
trouble) or stop and tell an operator (:class:`SmtpPermanentError` for 5xx,
:class:`~engage_listener.errors.AuthenticationError`,
:class:`~engage_listener.errors.TlsError`).

Decisions:

* TLS is always verified (system store, or ``ca_file`` when given).
* ``StartTls`` is mandatory once asked for: a server that does not offer it, or
  refuses it, gets no credentials and no mail (a stripped STARTTLS is a classic
  downgrade). aiosmtplib 5's ``start_tls=None`` (its default) would quietly stay in
  plain text when STARTTLS is not offered, and ``start_tls=True`` raises a bare
  SMTPException; so the client is built with ``start_tls=False`` and STARTTLS is
  driven here, where a missing or failed upgrade is a TlsError before AUTH.
* ``Security None`` with credentials logs in only with ``allow_plaintext_login``
  (Smtp/AllowPlaintextLogin), warned on every connection; without it the endpoint
  is refused before connecting, even if a configuration check was bypassed.
* The transaction is driven step by step (EHLO, STARTTLS, AUTH, MAIL, RCPT,
  DATA) so the protocol log shows each step; AUTH lines are masked by
  :class:`~engage_listener.observe.protolog.ProtocolLog` and message content is logged
  as a size only.
* A failure after the message was handed over (lost DATA reply) is flagged
  ``maybe_sent`` so the caller can avoid a duplicate.
* Exception texts never contain the password, even if a server echoes it.
* With a token provider AUTH is SASL XOAUTH2 (the response after the empty 334, as
  Microsoft documents it); a refused token is replaced by a brand-new one once,
  then reported. An unreachable identity provider is a temporary failure.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from email.utils import getaddresses, parseaddr
from functools import partial
from typing import TYPE_CHECKING, TypeVar

import aiosmtplib

from engage_listener.config.ack import SECURITIES
from engage_listener.errors import (
    AuthenticationError,
    PermanentError,
    TlsError,
    TransientError,
)
from engage_listener.oauth.provider import TokenRefused, xoauth2_error, xoauth2_payload
from engage_listener.observe.logs import get_logger
from engage_listener.observe.protolog import ProtocolLog

if TYPE_CHECKING:
    from engage_listener.oauth.provider import TokenProvider

_T = TypeVar("_T")


@dataclass(frozen=True)
class SmtpEndpoint:
    """Where and how to submit mail; ``security`` is ``SSL``, ``StartTls`` or ``None``."""

    host: str
    port: int
    security: str
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ca_file: str | None = None
    timeout: float = 30.0
    local_hostname: str | None = None
    # OAuth2: AUTH XOAUTH2 as `username` with its tokens (`password` unused).
    token_provider: TokenProvider | None = field(default=None, repr=False, compare=False)
    # The listener's ProtocolLogFile, so SMTP sessions are logged beside IMAP/POP3 ones.
    protolog_factory: Callable[[], ProtocolLog | None] | None = field(
        default=None, repr=False, compare=False
    )
    allow_plaintext_login: bool = False  # Security None with credentials: AUTH in clear

    @property
    def plaintext_login(self) -> bool:
        """Credentials would cross the network unencrypted."""
        has_credentials = bool(self.username) or self.token_provider is not None
        return self.security == "None" and has_credentials


class SmtpTemporaryError(TransientError):
    """4xx reply, refused/reset connection or timeout: retry with backoff."""

    def __init__(self, message: str, code: int | None = None, *, maybe_sent: bool = False):
        super().__init__(message)
        self.code = code
        self.maybe_sent = maybe_sent


class SmtpPermanentError(PermanentError):
    """5xx reply: the server will not take this message; record its reason."""

    def __init__(self, message: str, code: int | None = None, server_message: str = ""):
        super().__init__(message)
        self.code = code
        self.server_message = server_message


class _Session:
    """One connection: the client, the endpoint and an optional protocol log."""

    def __init__(self, endpoint: SmtpEndpoint, protolog: ProtocolLog | None) -> None:
        self.endpoint = endpoint
        self.log = protolog
        self.data_sent = False
        self.client = aiosmtplib.SMTP(
            hostname=endpoint.host,
            port=endpoint.port,
            timeout=endpoint.timeout,
            use_tls=endpoint.security == "SSL",
            start_tls=False,
            local_hostname=endpoint.local_hostname,
        )

    def sent(self, line: str) -> None:
        if self.log is not None:
            self.log.sent(line)

    def received(self, response: aiosmtplib.SMTPResponse) -> None:
        """Log a reply as on the wire: ``250-...`` continuation lines, ``250 ...`` last."""
        if self.log is None:
            return
        lines = response.message.splitlines() or [""]
        for number, line in enumerate(lines, 1):
            separator = " " if number == len(lines) else "-"
            self.log.received(f"{response.code}{separator}{line}".encode())

    def note(self, text: str) -> None:
        if self.log is not None:
            self.log.note(text)

    async def step(self, line: str, call: Callable[[], Awaitable[_T]]) -> _T:
        """Run one command, logging it and (when it is a response) the reply."""
        self.sent(line)
        result = await call()
        if isinstance(result, aiosmtplib.SMTPResponse):
            self.received(result)
        return result


def _tls_context(ca_file: str | None) -> ssl.SSLContext:
    """A verifying client context: hostname checked, private CA when configured."""
    try:
        return ssl.create_default_context(cafile=ca_file)
    except (OSError, ssl.SSLError) as exc:  # missing or malformed CaFile: operator's fix
        raise TlsError(f"cannot load CA file {ca_file}: {exc}") from None


async def _open(session: _Session) -> list[str]:
    """Connect, secure and authenticate; returns notes on what the server offers."""
    ep, client = session.endpoint, session.client
    session.note(f"connect {ep.host}:{ep.port} security={ep.security}")
    tls = None if ep.security == "None" else await asyncio.to_thread(_tls_context, ep.ca_file)
    session.received(await client.connect(tls_context=tls))
    await session.step(f"EHLO {client.local_hostname}", client.ehlo)
    notes = [f"connected to {ep.host}:{ep.port} ({ep.security})"]
    if ep.security == "StartTls":
        if not client.supports_extension("starttls"):
            raise TlsError(
                f"{ep.host}:{ep.port} offered no STARTTLS; refusing to send credentials in clear"
            )
        try:
            await session.step("STARTTLS", client.starttls)
        except aiosmtplib.SMTPResponseException as exc:  # e.g. 454: no quiet plain text
            message = f"{ep.host}:{ep.port} refused STARTTLS: {exc.code} {exc.message}"
            raise TlsError(_scrub(message, ep)) from None
        await session.step(f"EHLO {client.local_hostname}", client.ehlo)
        notes.append("STARTTLS ok, certificate verified")
    elif ep.security == "SSL":
        notes.append("TLS ok, certificate verified")
    if ep.plaintext_login:
        get_logger().warning("plaintext_login", host=ep.host, port=ep.port, protocol="smtp")
    if ep.username:
        notes.append(await _login(session))
    if client.supports_extension("size"):
        notes.append(f"SIZE {client.esmtp_extensions.get('size', '')}".strip())
    return notes


async def _login(session: _Session) -> str:
    """AUTH with the configured account; a server without AUTH is a config problem."""
    ep, client = session.endpoint, session.client
    if not client.supports_extension("auth"):
        raise AuthenticationError(f"{ep.host}:{ep.port} offers no AUTH (over this connection)")
    if ep.token_provider is not None:
        return await _login_xoauth2(session, ep.token_provider)
    username, password = ep.username or "", ep.password or ""
    session.note(f"AUTH as {username} ({' '.join(client.supported_auth_methods)})")
    session.received(await client.login(username, password))
    return f"authenticated as {username}"


async def _login_xoauth2(session: _Session, provider: TokenProvider) -> str:
    """AUTH XOAUTH2 with the provider's token; once more with a brand-new token if refused."""
    ep = session.endpoint
    where = f"SMTP {ep.host}:{ep.port}"
    username = ep.username or ""
    offered = [m.lower() for m in getattr(session.client, "server_auth_methods", [])]
    if "xoauth2" not in offered:
        raise AuthenticationError(f"{where} does not offer AUTH XOAUTH2 ({' '.join(offered)})")
    session.note(f"AUTH XOAUTH2 as {username}")
    for force in (False, True):
        try:
            token = await provider.token(force_refresh=force)
        except TransientError as exc:  # the identity provider, not the mail server
            raise SmtpTemporaryError(f"{where}: {exc}") from None
        reply, detail = await _xoauth2(session, username, token)
        if reply.code == 235:
            return f"authenticated as {username} (XOAUTH2)"
        if 400 <= reply.code < 500:
            raise SmtpTemporaryError(f"{where}: login: {reply.code} {reply.message}", reply.code)
    advice = getattr(provider, "refusal_advice", "")
    raise TokenRefused(
        f"{where}: XOAUTH2 login refused for {username}: {reply.code} {reply.message}"
        + (f" ({detail})" if detail else "")
        + (f". {advice}" if advice else "")
    )


async def _xoauth2(
    session: _Session, username: str, token: str
) -> tuple[aiosmtplib.SMTPResponse, str]:
    """One AUTH XOAUTH2 exchange; (final reply, the server's error details)."""
    client = session.client
    reply = await session.step("AUTH XOAUTH2", lambda: client.execute_command(b"AUTH", b"XOAUTH2"))
    if reply.code != 334:
        return reply, ""
    payload = xoauth2_payload(username, token).encode()
    reply = await session.step("***", lambda: client.execute_command(payload))  # never logged
    detail = ""
    if reply.code == 334:  # the error details; the empty answer gets the final reply
        detail = xoauth2_error(reply.message.encode())
        reply = await session.step("", lambda: client.execute_command(b""))
    return reply, detail


BeforeData = Callable[[], Awaitable[None]]


def _envelope(message: EmailMessage) -> tuple[str, list[str]]:
    """Envelope sender from From, recipients from To and Cc."""
    sender = parseaddr(str(message.get("From", "")))[1]
    fields = [str(v) for name in ("To", "Cc") for v in message.get_all(name, [])]
    recipients = [addr for _name, addr in getaddresses(fields) if addr]
    if not sender or not recipients:
        raise SmtpPermanentError("message has no From or no To address")
    return sender, recipients


async def _transfer(
    session: _Session, message: EmailMessage, before_data: BeforeData | None = None
) -> str:
    """MAIL, RCPT and DATA; the final DATA reply is the server's receipt."""
    client = session.client
    sender, recipients = _envelope(message)
    data = message.as_bytes(policy=SMTP_POLICY)
    await session.step(f"MAIL FROM:<{sender}>", lambda: client.mail(sender))
    for rcpt in recipients:
        await session.step(f"RCPT TO:<{rcpt}>", partial(client.rcpt, rcpt))
    if before_data is not None:  # the last moment at which nothing can have been accepted
        await before_data()
    session.sent(f"DATA <{len(data)} bytes>")
    session.data_sent = True
    reply = await client.data(data)
    session.received(reply)
    return f"{reply.code} {reply.message}"


async def _close(session: _Session) -> None:
    """QUIT politely; the outcome is already decided, so errors here are ignored."""
    client = session.client
    if client.is_connected:
        try:
            await session.step("QUIT", lambda: client.quit(timeout=5))
        except (aiosmtplib.SMTPException, OSError, TimeoutError):
            client.close()


def _scrub(text: str, endpoint: SmtpEndpoint) -> str:
    """Remove the password from any text bound for an exception or a log."""
    return text.replace(endpoint.password, "***") if endpoint.password else text


def _tls_cause(exc: BaseException) -> ssl.SSLError | None:
    """The SSL error somewhere in the cause chain (aiosmtplib wraps it)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _by_code(code: int, text: str, where: str) -> Exception:
    """4xx retries, 5xx (and anything else) is the server's final word on this message."""
    message = f"{where}: {code} {text}".strip()
    if 400 <= code < 500:
        return SmtpTemporaryError(message, code)
    return SmtpPermanentError(message, code, text)


def _classify(exc: Exception, session: _Session) -> Exception:
    """Map an aiosmtplib/network error to our transient/permanent errors."""
    ep = session.endpoint
    where = f"SMTP {ep.host}:{ep.port}"
    tls = _tls_cause(exc)
    if tls is not None:
        return TlsError(_scrub(f"{where}: TLS failed: {tls}", ep))
    if isinstance(exc, aiosmtplib.SMTPAuthenticationError):
        text = _scrub(exc.message, ep)
        if 400 <= exc.code < 500:
            return SmtpTemporaryError(f"{where}: login: {exc.code} {text}", exc.code)
        return AuthenticationError(f"{where}: login refused: {exc.code} {text}")
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused) and exc.recipients:
        first = min(exc.recipients, key=lambda r: r.code)
        return _by_code(first.code, _scrub(first.message, ep), where)
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        return _by_code(exc.code, _scrub(exc.message, ep), where)
    # No reply at all: if DATA went out, the server may have queued the message.
    return SmtpTemporaryError(_scrub(f"{where}: {exc}", ep), maybe_sent=session.data_sent)


async def _run(session: _Session, work: Callable[[], Awaitable[_T]]) -> _T:
    """Run ``work`` on an open session, classify failures, always close."""
    try:
        return await work()
    except (TlsError, AuthenticationError, SmtpTemporaryError, SmtpPermanentError):
        raise
    except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
        error = _classify(exc, session)
        session.note(f"failed: {error}")
        raise error from None
    except ValueError as exc:  # aiosmtplib refuses unsafe addresses before sending
        raise SmtpPermanentError(_scrub(f"unusable message: {exc}", session.endpoint)) from None
    finally:
        await _close(session)


def _check_endpoint(endpoint: SmtpEndpoint) -> None:
    """Reject a security value the config layer should have caught."""
    if endpoint.security not in SECURITIES:
        raise PermanentError(f"unknown SMTP security {endpoint.security!r}")
    if endpoint.plaintext_login and not endpoint.allow_plaintext_login:
        raise TlsError(
            f"SMTP {endpoint.host}:{endpoint.port}: Security None with a UserName would send "
            "credentials in clear; refusing (set Smtp/AllowPlaintextLogin True to allow it)"
        )


async def send_message(
    endpoint: SmtpEndpoint,
    message: EmailMessage,
    *,
    protolog: ProtocolLog | None = None,
    before_data: BeforeData | None = None,
) -> str:
    """Submit ``message``; returns the server's reply to DATA (e.g. ``250 ... queued as X``).

    ``before_data`` runs after the recipients were accepted and before DATA: the outbox
    records there that the message may be in the server's hands from now on.
    """
    _check_endpoint(endpoint)
    if protolog is None and endpoint.protolog_factory is not None:
        protolog = endpoint.protolog_factory()
    session = _Session(endpoint, protolog)

    async def work() -> str:
        await _open(session)
        return await _transfer(session, message, before_data)

    try:
        return await _run(session, work)
    finally:
        if protolog is not None:
            protolog.close()


async def check_smtp(endpoint: SmtpEndpoint) -> list[str]:
    """Connect, secure, authenticate and QUIT without sending: a connection test."""
    _check_endpoint(endpoint)
    session = _Session(endpoint, None)
    return await _run(session, lambda: _open(session))
