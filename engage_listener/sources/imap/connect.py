"""Connecting, securing and logging in over aioimaplib, and the plumbing every IMAP call
goes through; `ImapSession` (module `imap`) adds the mailbox operations.

aioimaplib gaps handled here (the wire-level ones are listed in `imap_wire`):
- no STARTTLS: we send it ourselves and upgrade the transport with loop.start_tls;
  with UseSsl False it is required (no silent downgrade): a server that does not offer
  it, or a failed upgrade, is a TlsError before anything secret is sent, unless the
  listener says AllowPlaintextLogin (warned at every connect);
- capabilities are not refreshed after TLS or login: we ask again;
- user names are sent unquoted: we quote them;
- UID STORE/MOVE/COPY and others have no timeout, FETCH only an inactivity timer:
  every call goes through `_call`, which gives it an overall deadline (a FETCH's grows
  with the bytes expected or announced, at a floor rate);
- a session is never reused after any error (a new one is built on reconnect);
- errors never carry the password or a token: library exceptions become ours with a
  scrubbed message, without the original chained.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Self

from aioimaplib import aioimaplib as lib

from engage_listener.errors import AuthenticationError, ConnectionLostError, ProtocolError, TlsError
from engage_listener.oauth.provider import TokenRefused, xoauth2_payload
from engage_listener.observe.logs import get_logger
from engage_listener.sources.imap.text import FolderState, ImapEndpoint, keepalive, quote
from engage_listener.sources.imap.wire import _Authenticate, _Login, _Protocol

if TYPE_CHECKING:
    from engage_listener.oauth.provider import TokenProvider

NO_STARTTLS = "server offered no STARTTLS; refusing to send credentials in clear"


class ImapConnection:
    """One logged-in IMAP connection. Any error leaves it unusable: build a new one."""

    def __init__(self, endpoint: ImapEndpoint, protocol: _Protocol) -> None:
        self.endpoint = endpoint
        self._proto = protocol
        self.selected: FolderState | None = None
        # Untagged lines that came with a command's answer but are not its result (an
        # EXISTS for mail that arrived meanwhile): the listener counts them as changes.
        self.unsolicited: list[bytes] = []
        self._idle_task: asyncio.Future[Any] | None = None
        self._refusals: list[float] = []  # when the server last pushed an untagged NO
        self._idle_cmd: Any = None
        self.tls = "implicit" if endpoint.use_ssl else "none"

    # ----- connection -------------------------------------------------------------
    @classmethod
    async def open(cls, endpoint: ImapEndpoint) -> Self:
        """Connect (TLS, or STARTTLS), log in, refresh capabilities."""
        loop = asyncio.get_running_loop()
        proto = _Protocol(loop, endpoint)
        if endpoint.password:
            proto.keep_secrets(endpoint.password, quote(endpoint.password))
        session = cls(endpoint, proto)
        try:
            await session._connect(loop)
            await session._login()
        except BaseException:
            session.abort()
            raise
        return session

    async def _connect(self, loop: asyncio.AbstractEventLoop) -> None:
        ep = self.endpoint
        context = ep.ssl_context() if ep.use_ssl else None
        self._note(f"connecting to {ep.host}:{ep.port} tls={ep.use_ssl}")
        try:
            await asyncio.wait_for(
                loop.create_connection(lambda: self._proto, ep.host, ep.port, ssl=context),
                ep.timeout,
            )
            await self._greeting()
        except ssl.SSLCertVerificationError as exc:
            raise TlsError(f"TLS certificate of {ep.host}:{ep.port} not trusted: {exc}") from exc
        except ssl.SSLError as exc:
            raise TlsError(f"TLS handshake with {ep.host}:{ep.port} failed: {exc}") from exc
        except (OSError, TimeoutError) as exc:
            raise self._proto.failure or ConnectionLostError(
                f"cannot connect to {ep.host}:{ep.port}: {exc or 'timed out'}"
            ) from exc
        keepalive(self._proto.transport.get_extra_info("socket"))
        if ep.use_ssl:
            return
        if self.has_capability("STARTTLS"):
            await self._starttls(loop)
        elif not ep.allow_plaintext_login:
            raise TlsError(f"{ep.host}:{ep.port}: {NO_STARTTLS}")
        else:
            self._note("no STARTTLS: logging in in clear (AllowPlaintextLogin)")
            get_logger().warning(
                "imap_plaintext_login",
                host=ep.host,
                port=ep.port,
                username=ep.username,
                why="AllowPlaintextLogin True and the server offers no STARTTLS: "
                "the credentials travel in clear",
            )

    async def _greeting(self) -> None:
        """Wait for the greeting (and aioimaplib's CAPABILITY after it), or the end of
        the connection, whichever is first: a server that broke a bound is not waited on."""
        proto = self._proto
        ready = asyncio.ensure_future(proto.wait("AUTH|NONAUTH"))
        lost = asyncio.ensure_future(proto.lost.wait())
        try:
            await asyncio.wait(
                {ready, lost}, timeout=self.endpoint.timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            ready.cancel()
            lost.cancel()
        if proto.failure is not None:
            raise proto.failure
        if not ready.done() or ready.cancelled():
            raise TimeoutError("no greeting" if not proto.lost.is_set() else "closed at once")

    async def _starttls(self, loop: asyncio.AbstractEventLoop) -> None:
        """Upgrade to TLS; any refusal or failure is a TlsError (never a fallback)."""
        ep = self.endpoint
        response = await self._call("STARTTLS", self._proto.execute(self._command("STARTTLS")))
        if response.result != "OK":
            raise TlsError(
                f"{ep.host}:{ep.port} refused STARTTLS ({self._text(response)}); "
                "refusing to send credentials in clear"
            )
        try:
            transport = await asyncio.wait_for(
                loop.start_tls(
                    self._proto.transport, self._proto, ep.ssl_context(), server_hostname=ep.host
                ),
                ep.timeout,
            )
        except ssl.SSLCertVerificationError as exc:
            raise TlsError(f"TLS certificate of {ep.host}:{ep.port} not trusted: {exc}") from exc
        except (ssl.SSLError, OSError, TimeoutError) as exc:
            raise TlsError(f"STARTTLS with {ep.host}:{ep.port} failed: {exc}") from exc
        self._proto.transport = transport
        self.tls = "starttls"
        self._note("STARTTLS done")
        await self._call("CAPABILITY", self._proto.capability())

    async def _login(self) -> None:
        ep = self.endpoint
        if ep.token_provider is not None:
            await self._login_xoauth2(ep.token_provider)
            return
        if "LOGINDISABLED" in self._proto.capabilities:
            raise AuthenticationError(
                f"{ep.host} refuses LOGIN on this connection (LOGINDISABLED); "
                "use UseSsl True or a server offering STARTTLS"
            )
        proto = self._proto
        command = _Login(
            "LOGIN", proto.new_tag(), quote(ep.username), quote(ep.password), loop=proto.loop
        )
        async with proto.state_condition:
            response = await self._call("LOGIN", proto.execute(command))
            if response.result == "OK":
                proto.state = lib.AUTH
            proto.state_condition.notify_all()
        if response.result != "OK":
            raise AuthenticationError(
                f"login refused for user {ep.username!r} at {ep.host}: {self._text(response)}"
            )
        await self._call("CAPABILITY", proto.capability())

    async def _login_xoauth2(self, provider: TokenProvider) -> None:
        """SASL XOAUTH2; a refused token is replaced by a brand-new one once, then reported."""
        ep = self.endpoint
        if not self.has_capability("AUTH=XOAUTH2"):
            raise AuthenticationError(
                f"{ep.host} does not offer AUTH=XOAUTH2 on this connection; "
                "it cannot log in with OAuth2"
            )
        response, detail = await self._authenticate(await provider.token())
        if response.result == "NO":  # e.g. revoked or expired early: one forced refresh
            token = await provider.token(force_refresh=True)
            if self._proto.lost.is_set():
                raise ConnectionLostError(f"{ep.host} closed the connection after a refused token")
            response, detail = await self._authenticate(token)
        if response.result != "OK":
            advice = getattr(provider, "refusal_advice", "")
            raise TokenRefused(
                f"XOAUTH2 login refused for user {ep.username!r} at {ep.host}: "
                f"{self._text(response)}"
                + (f" ({self._proto.scrub(detail)})" if detail else "")
                + (f". {advice}" if advice else "")
            )
        await self._call("CAPABILITY", self._proto.capability())

    async def _authenticate(self, token: str) -> tuple[Any, str]:
        """One AUTHENTICATE XOAUTH2 (initial response with SASL-IR); (response, error)."""
        proto = self._proto
        payload = xoauth2_payload(self.endpoint.username, token)
        proto.keep_secrets(token, payload)
        command = _Authenticate(
            proto.new_tag(), payload, self.has_capability("SASL-IR"), proto.loop
        )
        async with proto.state_condition:
            response = await self._call("AUTHENTICATE", proto.execute(command))
            if response.result == "OK":
                proto.state = lib.AUTH
            proto.state_condition.notify_all()
        return response, command.sasl_error

    async def logout(self) -> None:
        """Polite LOGOUT, bounded in time; the connection is closed either way."""
        try:
            if not self._proto.lost.is_set():
                await asyncio.wait_for(self._proto.logout(), 5)
        except Exception:  # noqa: S110 - logging out is best effort by design
            pass
        finally:
            self.abort()

    def abort(self) -> None:
        """Close the transport at once (no LOGOUT)."""
        transport = self._proto.transport
        if transport is not None and not transport.is_closing():
            transport.close()
        idle, self._idle_task = self._idle_task, None
        if idle is not None:  # it ends with the connection; nobody awaits it any more
            idle.add_done_callback(_consume)
        if self._proto.protolog is not None:
            self._proto.protolog.close()

    @property
    def lost(self) -> asyncio.Event:
        """Set when the server closed the connection or it dropped."""
        ev: asyncio.Event = self._proto.lost
        return ev

    def has_capability(self, name: str) -> bool:
        return name.upper() in {c.upper() for c in self._proto.capabilities}

    # ----- plumbing -----------------------------------------------------------------
    def _command(
        self, name: str, *args: str, prefix: str | None = None, untagged: str | None = None
    ) -> Any:
        proto = self._proto
        return lib.Command(
            name,
            proto.new_tag(),
            *args,
            prefix=prefix,
            untagged_resp_name=untagged,
            loop=proto.loop,
        )

    async def _call(
        self,
        what: str,
        awaitable: Awaitable[Any],
        *,
        deadline: Callable[[], float] | None = None,
        max_bytes: int | None = None,
        max_line: int | None = None,
    ) -> Any:
        """Await an aioimaplib call within its deadline (re-read while waiting: it may
        grow as literals are announced) and its response bounds; map its failures to our
        errors, never chaining the library's (their text may quote a secret)."""
        proto = self._proto
        if proto.lost.is_set() or proto.failure is not None:
            _close(awaitable)
            raise proto.failure or ConnectionLostError(f"connection lost before {what}")
        proto.expect(max_bytes, max_line)
        limit = deadline or (lambda: self.endpoint.timeout)
        task = asyncio.ensure_future(awaitable)
        started = proto.loop.time()
        try:
            while not task.done():
                left = started + limit() - proto.loop.time()
                if left <= 0:
                    self.abort()
                    raise ConnectionLostError(f"{what} timed out after {limit():.0f} s")
                await asyncio.wait({task}, timeout=left)
            return task.result()
        except lib.CommandTimeout:
            self.abort()
            raise ConnectionLostError(
                f"{what} timed out after {self.endpoint.timeout:.0f} s without data"
            ) from None
        except (lib.Abort, lib.Error) as exc:
            self.abort()
            raise ProtocolError(proto.scrub(f"{what} failed: {exc}")) from None
        except OSError as exc:
            self.abort()
            raise ConnectionLostError(proto.scrub(f"{what} failed: {exc}")) from exc
        finally:
            if not task.done():
                task.cancel()

    def _require_ok(self, response: Any, what: str) -> None:
        if response.result != "OK":
            raise ProtocolError(f"{what} refused by the server: {self._text(response)}")

    def _text(self, response: Any) -> str:
        """The server's last line, without any secret it may have echoed."""
        lines = [x for x in response.lines if isinstance(x, bytes)]
        text = lines[-1].decode("utf-8", "replace") if lines else str(response.result)
        return self._proto.scrub(text)

    def _note(self, text: str) -> None:
        if self._proto.protolog is not None:
            self._proto.protolog.note(text)


def _consume(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()


def _close(awaitable: Any) -> None:
    if asyncio.iscoroutine(awaitable):
        awaitable.close()
    elif isinstance(awaitable, asyncio.Future):
        awaitable.cancel()
