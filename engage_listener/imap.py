"""The one module that talks to aioimaplib, and owns every workaround for it.

aioimaplib gaps handled here, so nothing else touches the library:
- no STARTTLS: we send it ourselves and upgrade the transport with loop.start_tls;
- capabilities are not refreshed after TLS or login: we ask again;
- user names and mailbox names are sent unquoted and not UTF-7 encoded: we do both;
- UID STORE/MOVE/COPY and others have no timeout: every call goes through `_call`;
- a RecursionError on long responses (recursive line parser): replaced by a loop;
- a dropped connection leaves commands waiting forever: we fail them at once and a
  session is never reused after any error (a new one is built on reconnect);
- AUTHENTICATE continuations are never answered, so an XOAUTH2 failure would hang on
  the server's error challenge: we answer it (empty line) and get the NO at once.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl
import time
from collections.abc import Callable, Sequence, Set
from typing import TYPE_CHECKING, Any

from aioimaplib import aioimaplib as lib

from .errors import (
    AuthenticationError,
    ConnectionLostError,
    FolderMissingError,
    ProtocolError,
    TlsError,
)
from .imap_text import (
    EXISTS_RE,
    FETCH_HEAD_RE,
    LIST_DELIM_RE,
    SIZE_RE,
    UID_RE,
    UIDVALIDITY_RE,
    FolderState,
    ImapEndpoint,
    internal_date,
    keepalive,
    parse_bodies,
    quote,
    quote_mailbox,
    uid_chunks,
    uid_sets,
)
from .oauth import TokenRefused, xoauth2_error, xoauth2_payload
from .protolog import ProtocolLog

if TYPE_CHECKING:
    from .oauth import TokenProvider


NO_ROUNDS, NO_WINDOW = 3, 10.0  # a stale session says NO to every wait; one is a warning


class _Protocol(lib.IMAP4ClientProtocol):  # type: ignore[misc]
    """aioimaplib's protocol with a loop instead of recursion, a protocol log, fail-fast loss."""

    incomplete_line: bytes  # set by aioimaplib
    current_command: Any

    def __init__(self, loop: asyncio.AbstractEventLoop, protolog: ProtocolLog | None) -> None:
        super().__init__(loop, self._on_lost)
        self.protolog = protolog
        self.lost = asyncio.Event()

    def _on_lost(self, exc: Exception | None) -> None:
        self.lost.set()
        error = ConnectionLostError(f"connection lost: {exc or 'closed by server'}")
        commands = [self.pending_sync_command, *self.pending_async_commands.values()]
        for command in commands:
            if command is not None and not command._event.is_set():
                command._exception = error
                command.close(b"connection lost", "KO")
        if self.protolog is not None:
            self.protolog.note("connection closed")
            self.protolog.flush()

    def send(self, line: str, scrub: str | None = None) -> None:
        if self.protolog is not None:
            self.protolog.sent(line)
        self.transport.write(f"{line}\r\n".encode())

    def _continuation(self, line: bytes) -> None:
        """AUTHENTICATE: send the SASL response, or end an error challenge (XOAUTH2)."""
        cmd = self.pending_sync_command
        if not isinstance(cmd, _Authenticate):
            super()._continuation(line)
        elif cmd.response_line is not None:  # the empty challenge of a server without SASL-IR
            response, cmd.response_line = cmd.response_line, None
            if self.protolog is not None:
                self.protolog.sent("***")  # the token never reaches the protocol log
            self.transport.write(f"{response}\r\n".encode())
        else:  # the error details; an empty answer makes the server send its NO now
            cmd.sasl_error = xoauth2_error(line[1:])
            self.send("")

    def data_received(self, d: bytes) -> None:
        """aioimaplib's, without its debug line that formats every byte received (a
        repr of each chunk of mail, whether debug logging is on or not)."""
        pending = self.incomplete_line
        try:
            self._handle_responses(
                pending + d if pending else d, self._handle_line, self.current_command
            )
            self.incomplete_line = b""
            self.current_command = None
        except lib.IncompleteRead as incomplete:
            self.current_command = incomplete.cmd
            self.incomplete_line = incomplete.data
        if self.protolog is not None:
            self.protolog.flush()

    def _handle_responses(
        self,
        data: bytes,
        line_handler: Callable[[bytes, Any], Any],
        current_cmd: Any = None,
    ) -> None:
        """Same logic as aioimaplib's, iterative: long responses cannot overflow the stack."""
        pos = 0
        while True:
            if pos >= len(data):
                if self.pending_sync_command is not None:
                    self.pending_sync_command.flush()
                if current_cmd is not None and current_cmd.wait_data():
                    raise lib.IncompleteRead(current_cmd)
                return
            if current_cmd is not None and current_cmd.wait_literal_data():
                pos = _take_literal(current_cmd, data, pos)
                if current_cmd.wait_literal_data():
                    raise lib.IncompleteRead(current_cmd)
                if self.protolog is not None and self.protolog.bodies:
                    self.protolog.literal_data(bytes(current_cmd.response.lines[-1]))
                continue
            end = data.find(lib.CRLF, pos)
            if end < 0:
                raise lib.IncompleteRead(current_cmd, data[pos:])
            line = data[pos:end]
            pos = end + 2
            current_cmd = self._after_line(line, line_handler(line, current_cmd))

    def _after_line(self, line: bytes, cmd: Any) -> Any:
        """The command that the following data belongs to, starting a literal if announced."""
        if self.protolog is not None:
            self.protolog.received(line)
        literal = lib.literal_data_re.match(line)
        if literal:
            size = int(literal.group("size"))
            if self.protolog is not None:
                self.protolog.literal(size)
            if cmd is None:
                cmd = lib.Command("NIL", "unused")
            cmd.begin_literal_data(size)
            return cmd
        return cmd if cmd is not None and cmd.wait_data() else None


def _take_literal(cmd: Any, data: bytes, pos: int) -> int:
    """aioimaplib's `append_literal_data` from `pos` on, returning where the literal ended.
    Its version copies the rest of the read after every literal: quadratic when one read
    holds many small mails."""
    buf = cmd._resp_literal_data
    end: int = min(len(data), pos + cmd._expected_size - len(buf))
    buf += memoryview(data)[pos:end]
    if cmd.wait_literal_data():
        cmd._reset_timer()
    else:
        cmd.append_to_resp(buf)  # resets the timer too
        cmd._end_literal_data()
    return end


class _Fetch(lib.FetchCommand):  # type: ignore[misc]
    """FETCH whose "more to come?" test counts parentheses once per line, outside literals.

    aioimaplib's joins every line since the last FETCH, message literals included, at each
    chunk received (quadratic in a message's size), and counts parentheses inside the mail
    itself. Literal payloads are the bytearray lines.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._depth = 0
        self._counted = 0

    def wait_data(self) -> bool:
        lines = self._resp_lines
        for line in lines[self._counted :]:
            if type(line) is bytes:
                if FETCH_HEAD_RE.match(line):
                    self._depth = 0
                self._depth += line.count(b"(") - line.count(b")")
        self._counted = len(lines)
        return self._depth > 0


class _Authenticate(lib.Command):  # type: ignore[misc]
    """AUTHENTICATE XOAUTH2, whose repr() (in tracebacks and logs) hides the token."""

    def __init__(self, tag: str, payload: str, initial: bool, loop: Any) -> None:
        args = ("XOAUTH2", payload) if initial else ("XOAUTH2",)
        super().__init__("AUTHENTICATE", tag, *args, loop=loop)
        self.response_line: str | None = None if initial else payload
        self.sasl_error = ""

    def __str__(self) -> str:  # the line sent
        return str(super().__repr__())

    def __repr__(self) -> str:
        return f"{self.tag} AUTHENTICATE XOAUTH2 ***"


class ImapSession:
    """One logged-in IMAP connection. Any error leaves it unusable: build a new one."""

    def __init__(self, endpoint: ImapEndpoint, protocol: _Protocol) -> None:
        self.endpoint = endpoint
        self._proto = protocol
        self.selected: FolderState | None = None
        self._idle_task: asyncio.Future[Any] | None = None
        self._refusals: list[float] = []  # when the server last pushed an untagged NO
        self._idle_cmd: Any = None
        self.tls = "implicit" if endpoint.use_ssl else "none"

    # ----- connection -------------------------------------------------------------
    @classmethod
    async def open(cls, endpoint: ImapEndpoint) -> ImapSession:
        """Connect (TLS, or STARTTLS when offered), log in, refresh capabilities."""
        loop = asyncio.get_running_loop()
        protolog = endpoint.protolog_factory()
        proto = _Protocol(loop, protolog)
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
            await asyncio.wait_for(self._proto.wait("AUTH|NONAUTH"), ep.timeout)
        except ssl.SSLCertVerificationError as exc:
            raise TlsError(f"TLS certificate of {ep.host}:{ep.port} not trusted: {exc}") from exc
        except ssl.SSLError as exc:
            raise TlsError(f"TLS handshake with {ep.host}:{ep.port} failed: {exc}") from exc
        except (OSError, TimeoutError) as exc:
            raise ConnectionLostError(
                f"cannot connect to {ep.host}:{ep.port}: {exc or 'timed out'}"
            ) from exc
        keepalive(self._proto.transport.get_extra_info("socket"))
        if not ep.use_ssl and self.has_capability("STARTTLS"):
            await self._starttls(loop)

    async def _starttls(self, loop: asyncio.AbstractEventLoop) -> None:
        ep = self.endpoint
        response = await self._call("STARTTLS", self._proto.execute(self._command("STARTTLS")))
        self._require_ok(response, "STARTTLS")
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
        command = self._command("LOGIN", quote(ep.username), quote(ep.password))
        proto = self._proto
        async with proto.state_condition:
            response = await self._call("LOGIN", proto.execute(command))
            if response.result == "OK":
                proto.state = lib.AUTH
            proto.state_condition.notify_all()
        if response.result != "OK":
            raise AuthenticationError(
                f"login refused for user {ep.username!r} at {ep.host}: {_text(response)}"
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
                f"XOAUTH2 login refused for user {ep.username!r} at {ep.host}: {_text(response)}"
                + (f" ({detail})" if detail else "")
                + (f". {advice}" if advice else "")
            )
        await self._call("CAPABILITY", self._proto.capability())

    async def _authenticate(self, token: str) -> tuple[Any, str]:
        """One AUTHENTICATE XOAUTH2 (initial response with SASL-IR); (response, error)."""
        proto = self._proto
        payload = xoauth2_payload(self.endpoint.username, token)
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

    # ----- folders ------------------------------------------------------------------
    async def folder_exists(self, name: str) -> bool:
        """STATUS the folder: OK means it exists (works whether selected or not)."""
        response = await self._call(
            "STATUS", self._proto.simple_command("STATUS", quote_mailbox(name), "(UIDNEXT)")
        )
        return bool(response.result == "OK")

    async def delimiter(self) -> str | None:
        """The hierarchy delimiter (LIST "" ""), None for a flat namespace."""
        response = await self._call("LIST", self._proto.simple_command("LIST", '""', '""'))
        for line in response.lines[:-1]:
            if isinstance(line, bytes) and (m := LIST_DELIM_RE.search(line)):
                return m.group(1).decode() if m.group(1) else None
        return None

    async def create_folder(self, name: str) -> None:
        response = await self._call(
            "CREATE", self._proto.simple_command("CREATE", quote_mailbox(name))
        )
        if response.result != "OK" and not await self.folder_exists(name):
            raise ProtocolError(f"cannot create folder {name!r}: {_text(response)}")

    async def select(self, name: str) -> FolderState:
        """SELECT the folder; a NO is reported as a missing folder."""
        response = await self._call("SELECT", self._proto.select(quote_mailbox(name)))
        if response.result != "OK":
            raise FolderMissingError(f"cannot select folder {name!r}: {_text(response)}")
        uidvalidity, exists = 0, 0
        for line in response.lines:
            if isinstance(line, bytes):
                if m := UIDVALIDITY_RE.search(line):
                    uidvalidity = int(m.group(1))
                elif m := EXISTS_RE.match(line):
                    exists = int(m.group(1))
        self.selected = FolderState(name, uidvalidity, exists)
        return self.selected

    # ----- messages -----------------------------------------------------------------
    async def search_all(self) -> list[int]:
        """UIDs of every message in the selected folder not flagged \\Deleted, ascending.

        A \\Deleted mail is on its way out: another client's, or one of ours left
        flagged after a copy on a server without UIDPLUS (`_delete_set`).
        """
        return await self.search("UNDELETED", charset=None)

    async def fetch_sizes(self, uids: Sequence[int]) -> dict[int, int]:
        """RFC822.SIZE of each UID, to plan fetch chunks without loading bodies."""
        return {uid: size for uid, (size, _) in (await self.fetch_meta(uids)).items()}

    async def fetch_meta(self, uids: Sequence[int]) -> dict[int, tuple[int, dt.datetime | None]]:
        """(RFC822.SIZE, INTERNALDATE) of each UID: chunk planning and date filters."""
        meta: dict[int, tuple[int, dt.datetime | None]] = {}
        for uid_set in uid_sets(uids):
            response = await self._fetch(uid_set, "(UID RFC822.SIZE INTERNALDATE)")
            for line in response.lines:
                if isinstance(line, bytes) and FETCH_HEAD_RE.match(line):
                    uid, size = UID_RE.search(line), SIZE_RE.search(line)
                    if uid and size:
                        meta[int(uid.group(1))] = (int(size.group(1)), internal_date(line))
        return meta

    async def search(self, *criteria: str, charset: str | None = "UTF-8") -> list[int]:
        """UID SEARCH with the given criteria (strings quoted by the caller)."""
        response = await self._call(
            "UID SEARCH", self._proto.search(*criteria, charset=charset, by_uid=True)
        )
        self._require_ok(response, "UID SEARCH")
        found: list[int] = []
        for line in response.lines[:-1]:
            if isinstance(line, bytes):
                found.extend(int(tok) for tok in line.split() if tok.isdigit())
        return sorted(found)

    async def fetch_headers(self, uids: Sequence[int], fields: str) -> list[tuple[int, bytes]]:
        """Selected header fields of each UID (BODY.PEEK[HEADER.FIELDS (...)])."""
        result: list[tuple[int, bytes]] = []
        for uid_set in uid_sets(uids):
            response = await self._fetch(uid_set, f"(UID BODY.PEEK[HEADER.FIELDS ({fields})])")
            result.extend(parse_bodies(response.lines))
        return result

    async def fetch_bodies(self, uids: Sequence[int]) -> list[tuple[int, bytes]]:
        """Raw bytes of the given messages (BODY.PEEK[]: the \\Seen flag is left alone)."""
        if not uids:
            return []
        result: list[tuple[int, bytes]] = []
        for uid_set in uid_sets(uids):
            response = await self._fetch(uid_set, "(UID BODY.PEEK[])")
            result.extend(parse_bodies(response.lines))
        return result

    async def _fetch(self, uid_set: str, items: str) -> Any:
        proto = self._proto
        command = _Fetch(
            proto.new_tag(),
            uid_set,
            items,
            prefix="UID",
            loop=proto.loop,
            timeout=self.endpoint.timeout,
        )
        response = await self._call("UID FETCH", proto.execute(command), inactivity=True)
        self._require_ok(response, "UID FETCH")
        return response

    async def move(
        self, uids: Sequence[int], folder: str, also_ours: Set[int] = frozenset()
    ) -> int:
        """Move to `folder`: UID MOVE, else UID COPY + \\Deleted + expunge of our UIDs.

        Returns how many were copied but left flagged \\Deleted (see `_delete_set`)."""
        target = quote_mailbox(folder)
        left = 0
        for uid_set, chunk in uid_chunks(uids):
            if self.has_capability("MOVE"):
                command = self._command("MOVE", uid_set, target, prefix="UID")
                self._require_ok(
                    await self._call("UID MOVE", self._proto.execute(command)), "UID MOVE"
                )
            else:
                command = self._command("COPY", uid_set, target, prefix="UID")
                self._require_ok(
                    await self._call("UID COPY", self._proto.execute(command)), "UID COPY"
                )
                left += await self._delete_set(uid_set, chunk, also_ours)
        return left

    async def delete(self, uids: Sequence[int], also_ours: Set[int] = frozenset()) -> int:
        """Flag \\Deleted and expunge only these UIDs; returns how many stay flagged."""
        left = 0
        for uid_set, chunk in uid_chunks(uids):
            left += await self._delete_set(uid_set, chunk, also_ours)
        return left

    async def _delete_set(self, uid_set: str, uids: Sequence[int], also_ours: Set[int]) -> int:
        """Flag and expunge our UIDs, never another client's \\Deleted mail.

        Without UIDPLUS only a plain EXPUNGE exists, which removes every \\Deleted mail
        of the folder: it is sent only when all of those are ours (these `uids`, or
        `also_ours`: left flagged by an earlier batch). Otherwise our mails stay flagged
        (`search_all` skips them) and the count of them is returned.
        """
        store = self._command(
            "STORE", uid_set, "+FLAGS.SILENT", r"(\Deleted)", prefix="UID", untagged="FETCH"
        )
        self._require_ok(await self._call("UID STORE", self._proto.execute(store)), "UID STORE")
        if self.has_capability("UIDPLUS"):
            expunge = self._command("EXPUNGE", uid_set, prefix="UID")
        elif set(await self.search("DELETED", charset=None)) <= set(uids) | also_ours:
            expunge = self._command("EXPUNGE")
        else:
            self._note("not expunging: other clients' \\Deleted mail is in this folder")
            return len(uids)
        self._require_ok(await self._call("EXPUNGE", self._proto.execute(expunge)), "EXPUNGE")
        return 0

    # ----- waiting for changes ---------------------------------------------------
    async def noop(self) -> list[bytes]:
        """NOOP; returns the untagged lines the server sent with it."""
        response = await self._call("NOOP", self._proto.simple_command("NOOP"))
        self._require_ok(response, "NOOP")
        return self._pushed([line for line in response.lines[:-1] if isinstance(line, bytes)])

    async def idle_start(self) -> None:
        """Enter IDLE and wait for the server's continuation."""
        proto = self._proto
        if not self.has_capability("IDLE"):
            raise ProtocolError("the server does not offer IDLE")
        proto._idle_event.clear()
        self._idle_cmd = lib.IdleCommand(proto.new_tag(), proto.idle_queue, loop=proto.loop)
        self._idle_task = asyncio.ensure_future(proto.execute(self._idle_cmd))
        ack = asyncio.ensure_future(proto.wait_for_idle_response())
        done, _ = await asyncio.wait(
            {self._idle_task, ack},
            timeout=self.endpoint.timeout,
            return_when=asyncio.FIRST_COMPLETED,
        )
        ack.cancel()
        if self._idle_task in done or not done:
            raise ProtocolError("the server did not accept IDLE")

    async def idle_push(self) -> list[bytes]:
        """Wait for the next untagged lines pushed during IDLE (cancel to stop waiting)."""
        get = asyncio.ensure_future(self._proto.idle_queue.get())
        lost = asyncio.ensure_future(self._proto.lost.wait())
        try:
            await asyncio.wait({get, lost}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            lost.cancel()
            if not get.done():
                get.cancel()
        if not get.done() or get.cancelled():
            raise ConnectionLostError("connection lost during IDLE")
        return self._pushed([line for line in get.result() if isinstance(line, bytes)])

    async def idle_done(self) -> list[bytes]:
        """Leave IDLE; returns lines the server pushed that were not read yet."""
        task, self._idle_task = self._idle_task, None
        if task is None:
            return []
        self._proto.idle_done()
        await self._call("IDLE", task)
        lines: list[bytes] = []
        while not self._proto.idle_queue.empty():
            lines.extend(x for x in self._proto.idle_queue.get_nowait() if isinstance(x, bytes))
        # Lines that arrived just before the tagged OK stay in the command's buffer.
        lines.extend(x for x in self._idle_cmd.buffer if isinstance(x, bytes))
        self._idle_cmd.buffer.clear()
        return self._pushed(lines)

    def _pushed(self, lines: list[bytes]) -> list[bytes]:
        """Lines pushed while waiting; BYE, or NO_ROUNDS NOs within NO_WINDOW seconds, end
        the session.

        Dovecot says BYE when the selected folder is deleted, but when the folder is
        deleted and recreated before the session notices, it may keep the stale session
        and answer every IDLE at once with "* NO Internal error": re-issuing IDLE would
        spin forever on a folder that no longer exists. Reconnecting selects it anew. A
        NO now and then is only a warning (RFC 3501, e.g. "* NO [ALERT] quota").
        """
        for line in lines:
            text = line.decode("utf-8", "replace").strip()
            if line.startswith(b"BYE"):
                self.abort()
                raise ConnectionLostError(f"the server ended the session: {text}")
            if line.startswith(b"NO "):
                now = time.monotonic()
                self._refusals = [t for t in self._refusals if now - t < NO_WINDOW] + [now]
                if len(self._refusals) >= NO_ROUNDS:
                    self.abort()
                    raise ConnectionLostError(f"the server keeps refusing to wait: {text}")
        return lines

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

    async def _call(self, what: str, awaitable: Any, *, inactivity: bool = False) -> Any:
        """Await an aioimaplib call with a timeout; map its failures to our errors."""
        if self._proto.lost.is_set():
            _close(awaitable)
            raise ConnectionLostError(f"connection lost before {what}")
        try:
            if inactivity:  # the command has its own inactivity timer (FETCH)
                return await awaitable
            return await asyncio.wait_for(awaitable, self.endpoint.timeout)
        except (TimeoutError, lib.CommandTimeout) as exc:
            self.abort()
            raise ConnectionLostError(
                f"{what} timed out after {self.endpoint.timeout:.0f} s"
            ) from exc
        except (lib.Abort, lib.Error) as exc:
            self.abort()
            raise ProtocolError(f"{what} failed: {exc}") from exc
        except OSError as exc:
            self.abort()
            raise ConnectionLostError(f"{what} failed: {exc}") from exc

    def _require_ok(self, response: Any, what: str) -> None:
        if response.result != "OK":
            raise ProtocolError(f"{what} refused by the server: {_text(response)}")

    def _note(self, text: str) -> None:
        if self._proto.protolog is not None:
            self._proto.protolog.note(text)


def _text(response: Any) -> str:
    lines = [x for x in response.lines if isinstance(x, bytes)]
    return lines[-1].decode("utf-8", "replace") if lines else response.result


def _consume(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()


def _close(awaitable: Any) -> None:
    if asyncio.iscoroutine(awaitable):
        awaitable.close()
    elif isinstance(awaitable, asyncio.Future):
        awaitable.cancel()
