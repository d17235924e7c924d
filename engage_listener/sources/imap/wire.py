"""The wire half of the aioimaplib adapter: the protocol object, its bounds, its commands.

Split from `imap` (the session) so both stay small; together they are the only modules
that touch aioimaplib, and they own every workaround for it:
- a RecursionError on long responses (recursive line parser): replaced by a loop;
- quadratic literal and FETCH handling: `_take_literal`, `_Fetch`;
- nothing bounded what a server sends: a line without CRLF, an endless literal or a
  flood of lines grew without end. Here a line, a literal and one command's response
  each have a cap (`ImapLimits`); breaking one fails every pending command with a
  ProtocolError and drops the connection, before the bytes are buffered;
- secrets in error paths: aioimaplib formats the pending command into its `Abort`
  ("unexpected tagged response with pending sync command (A1 LOGIN "u" "password")"),
  its debug lines and `CommandTimeout`, and raises from `data_received`, so asyncio's
  exception handler printed the password. Secret commands (`_Secret`) show `***` in
  every str()/repr(); only `send` writes their real line, the session's secrets are
  registered with `logs`, and every error text leaving this module passes `logs.scrub`;
  aioimaplib's own log lines quote what is sent and received (a server may echo the
  LOGIN back): its logger is muted, the protocol log (masked) says the same;
- a dropped connection leaves commands waiting forever: we fail them at once;
- AUTHENTICATE continuations are never answered: we answer them (XOAUTH2).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from aioimaplib import aioimaplib as lib

from engage_listener.errors import ConnectionLostError, EngageError, ProtocolError
from engage_listener.oauth.provider import xoauth2_error
from engage_listener.observe.logs import register_secret, scrub
from engage_listener.observe.protolog import ProtocolLog
from engage_listener.sources.imap.text import FETCH_HEAD_RE, ImapEndpoint


def _mute(record: logging.LogRecord) -> bool:
    return False


lib.log.addFilter(_mute)


class _Breach(Exception):
    """The server broke one of the bounds (a line, a literal, a response too big)."""


class _Secret(lib.Command):  # type: ignore[misc]
    """A command with secret arguments (LOGIN, AUTHENTICATE): its str() and repr(), which
    aioimaplib puts into exceptions and log lines, never show them; `wire` is the line."""

    shown = ""  # the arguments that may be shown

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sent = False

    def __repr__(self) -> str:
        return f"{self.tag} {self.name} {self.shown}***"

    __str__ = __repr__

    def wire(self) -> str:
        return str(lib.Command.__repr__(self))


class _Login(_Secret):
    """LOGIN "user" "password"."""


class _Authenticate(_Secret):
    """AUTHENTICATE XOAUTH2, with the initial response when the server has SASL-IR."""

    shown = "XOAUTH2 "

    def __init__(self, tag: str, payload: str, initial: bool, loop: Any) -> None:
        args = ("XOAUTH2", payload) if initial else ("XOAUTH2",)
        super().__init__("AUTHENTICATE", tag, *args, loop=loop)
        self.response_line: str | None = None if initial else payload
        self.sasl_error = ""


class _Protocol(lib.IMAP4ClientProtocol):  # type: ignore[misc]
    """aioimaplib's protocol: a loop instead of recursion, a protocol log, fail-fast loss,
    bounded reads, secret-free errors."""

    incomplete_line: bytes  # set by aioimaplib
    current_command: Any

    def __init__(self, loop: asyncio.AbstractEventLoop, endpoint: ImapEndpoint) -> None:
        super().__init__(loop, self._on_lost)
        self.protolog: ProtocolLog | None = endpoint.protolog_factory()
        self.limits = endpoint.limits
        self.max_literal = endpoint.max_literal
        self.lost = asyncio.Event()
        self.failure: EngageError | None = None
        self.announced = 0  # literal bytes announced since `expect`
        self._received = 0
        self._budget = self.limits.max_response
        self._line_cap = self.limits.max_line
        self._unsolicited: list[bytes] = []

    def _untagged_response(self, line: bytes) -> Any:
        """aioimaplib drops an untagged line no running command asked for: an EXISTS that
        Dovecot sends with a SEARCH answer for mail that arrived meanwhile, and never
        again. Kept (the latest 100) for the listener, which counts it as a change."""
        command = super()._untagged_response(line)
        if command is None:
            self._unsolicited.append(line.removeprefix(b"* "))
            del self._unsolicited[:-100]
        return command

    def take_unsolicited(self) -> list[bytes]:
        """The untagged lines no command took since the last call, oldest first."""
        lines, self._unsolicited = self._unsolicited, []
        return lines

    def expect(self, max_bytes: int | None = None, max_line: int | None = None) -> None:
        """Bounds for the response to the command about to be sent (one at a time)."""
        self._budget = max_bytes or self.limits.max_response
        self._line_cap = max_line or self.limits.max_line
        self._received = self.announced = 0

    @staticmethod
    def keep_secrets(*values: str) -> None:
        """Secrets this session sends: registered with the one scrub (`logs.scrub`) that
        every error text, log line and protocol-log line passes through."""
        for value in values:
            register_secret(value)

    @staticmethod
    def scrub(text: str) -> str:
        return scrub(text)

    def fail(self, error: EngageError) -> None:
        """Drop the connection; every pending command fails with `error`."""
        if self.failure is None:
            self.failure = error
            self._note(f"aborted: {error}")
        if self.transport is not None:
            self.transport.abort()

    def _on_lost(self, exc: Exception | None) -> None:
        self.lost.set()
        error = self.failure or ConnectionLostError(
            self.scrub(f"connection lost: {exc or 'closed by server'}")
        )
        commands = [self.pending_sync_command, *self.pending_async_commands.values()]
        for command in commands:
            if command is not None and not command._event.is_set():
                command._exception = error
                command.close(b"connection lost", "KO")
        self._note("connection closed")
        if self.protolog is not None:
            self.protolog.flush()

    def _note(self, text: str) -> None:
        if self.protolog is not None:
            self.protolog.note(text)

    def send(self, line: str, scrub: str | None = None) -> None:
        """Write a line; a secret command's real line replaces its masked str()."""
        cmd = self.pending_sync_command
        if isinstance(cmd, _Secret) and not cmd.sent and line == str(cmd):
            cmd.sent = True
            line = cmd.wire()
        if self.protolog is not None:
            self.protolog.sent(line)  # masks LOGIN and AUTHENTICATE itself
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
        """aioimaplib's, bounded, never raising (asyncio would print the exception, and
        aioimaplib's may quote the pending LOGIN), and without its debug line that
        formats every byte received."""
        if self.failure is not None:
            return
        self._received += len(d)
        try:
            if self._received > self._budget:
                raise _Breach(f"response over {self._budget} bytes")
            self._receive(d)
        except _Breach as exc:
            self.fail(ProtocolError(f"the server broke a bound: {exc}"))
        except Exception as exc:  # anything aioimaplib raises ends the session
            self.fail(ProtocolError(self.scrub(f"unusable response: {exc}")))
        if self.protolog is not None:
            self.protolog.flush()

    def _receive(self, d: bytes) -> None:
        pending = self.incomplete_line
        try:
            self._handle_responses(
                pending + d if pending else d, self._handle_line, self.current_command
            )
            self.incomplete_line = b""
            self.current_command = None
        except lib.IncompleteRead as incomplete:
            if len(incomplete.data) > self._line_cap:
                raise _Breach(f"a line of over {self._line_cap} bytes") from None
            self.current_command = incomplete.cmd
            self.incomplete_line = incomplete.data

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
            if end - pos > self._line_cap:
                raise _Breach(f"a line of over {self._line_cap} bytes")
            line = data[pos:end]
            pos = end + 2
            current_cmd = self._after_line(line, line_handler(line, current_cmd))

    def _after_line(self, line: bytes, cmd: Any) -> Any:
        """The command that the following data belongs to, starting a literal if announced."""
        if self.protolog is not None:
            self.protolog.received(line)  # scrubbed there, as every protocol-log line
        literal = lib.literal_data_re.match(line) if line.endswith(b"}") else None
        if literal:
            size = int(literal.group("size"))
            self._check_literal(size)
            if self.protolog is not None:
                self.protolog.literal(size)
            if cmd is None:
                cmd = lib.Command("NIL", "unused", loop=self.loop)
            cmd.begin_literal_data(size)
            return cmd
        return cmd if cmd is not None and cmd.wait_data() else None

    def _check_literal(self, size: int) -> None:
        """Refuse a literal before a byte of it is buffered."""
        if size > self.max_literal:
            raise _Breach(f"a literal of {size} bytes announced, over {self.max_literal}")
        self.announced += size
        if self.announced > self._budget:
            raise _Breach(f"literals of {self.announced} bytes announced, over {self._budget}")


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
