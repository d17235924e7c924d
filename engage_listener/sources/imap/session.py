"""The IMAP session: folders, messages, waiting for changes. With `imap_connect` (the
connection, TLS, login and the bounded `_call`) and `imap_wire` (the protocol object)
the only code that touches aioimaplib, owning every workaround for it:
- mailbox names are sent unquoted and not UTF-7 encoded: we do both;
- a mail's body is fetched with the response budget and deadline its size calls for,
  an oversize mail's header alone (`fetch_header_blocks`, a partial fetch);
- Dovecot's stale-session NOs and BYEs while waiting end the session (`_pushed`).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Sequence, Set
from typing import Any

from aioimaplib import aioimaplib as lib

from engage_listener.errors import ConnectionLostError, FolderMissingError, ProtocolError
from engage_listener.sources.imap.connect import NO_STARTTLS, ImapConnection
from engage_listener.sources.imap.text import (
    EXISTS_RE,
    FETCH_HEAD_RE,
    LIST_DELIM_RE,
    SIZE_RE,
    UID_RE,
    UIDVALIDITY_RE,
    FolderState,
    internal_date,
    parse_bodies,
    quote_mailbox,
    uid_chunks,
)
from engage_listener.sources.imap.wire import _Fetch

__all__ = ["NO_STARTTLS", "ImapSession"]

NO_ROUNDS, NO_WINDOW = 3, 10.0  # a stale session says NO to every wait; one is a warning
META_BYTES = 200  # about what one FETCH (UID RFC822.SIZE INTERNALDATE) line takes


class ImapSession(ImapConnection):
    """One logged-in IMAP connection and what the listener does with it."""

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
            raise ProtocolError(f"cannot create folder {name!r}: {self._text(response)}")

    async def select(self, name: str) -> FolderState:
        """SELECT the folder; a NO is reported as a missing folder."""
        response = await self._call("SELECT", self._proto.select(quote_mailbox(name)))
        if response.result != "OK":
            raise FolderMissingError(f"cannot select folder {name!r}: {self._text(response)}")
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

    async def fetch_meta(self, uids: Sequence[int]) -> dict[int, tuple[int, dt.datetime | None]]:
        """(RFC822.SIZE, INTERNALDATE) of each UID: chunk planning and date filters."""
        meta: dict[int, tuple[int, dt.datetime | None]] = {}
        for uid_set, chunk in uid_chunks(uids):
            response = await self._fetch(
                uid_set, "(UID RFC822.SIZE INTERNALDATE)", len(chunk) * META_BYTES
            )
            for line in response.lines:
                if isinstance(line, bytes) and FETCH_HEAD_RE.match(line):
                    uid, size = UID_RE.search(line), SIZE_RE.search(line)
                    if uid and size:
                        meta[int(uid.group(1))] = (int(size.group(1)), internal_date(line))
        return meta

    async def search(self, *criteria: str, charset: str | None = "UTF-8") -> list[int]:
        """UID SEARCH with the given criteria (strings quoted by the caller); its one
        response line lists every UID, so it may be as long as a whole response."""
        response = await self._call(
            "UID SEARCH",
            self._proto.search(*criteria, charset=charset, by_uid=True),
            max_line=self.endpoint.limits.max_response,
        )
        self._require_ok(response, "UID SEARCH")
        found: list[int] = []
        for line in response.lines[:-1]:
            if not isinstance(line, bytes):
                continue
            words = line.removeprefix(b"* ").split()
            if words[:1] == [b"SEARCH"]:  # aioimaplib gives the result without it, but
                words = words[1:]  # a line as the server sent it may come too
            if all(word.isdigit() for word in words):
                found.extend(int(word) for word in words)
            else:  # "1 EXISTS" for mail that arrived meanwhile: no UID
                self.unsolicited.append(line)
        del self.unsolicited[:-100]  # the latest say enough; never grows without end
        return sorted(found)

    def take_unsolicited(self) -> list[bytes]:
        """The untagged lines no command took, since the last call (see `unsolicited`)."""
        lines = self._proto.take_unsolicited() + self.unsolicited
        self.unsolicited = []
        return lines

    async def fetch_headers(self, uids: Sequence[int], fields: str) -> list[tuple[int, bytes]]:
        """Selected header fields of each UID (BODY.PEEK[HEADER.FIELDS (...)])."""
        return await self._fetch_items(uids, f"(UID BODY.PEEK[HEADER.FIELDS ({fields})])")

    async def fetch_header_blocks(self, uids: Sequence[int]) -> list[tuple[int, bytes]]:
        """The whole header of each UID, at most `limits.header_cap` bytes of it (a
        partial fetch: an oversize mail's header is all that is ever read of it)."""
        cap = self.endpoint.limits.header_cap
        return await self._fetch_items(uids, f"(UID BODY.PEEK[HEADER]<0.{cap}>)", cap)

    async def fetch_bodies(
        self, uids: Sequence[int], expected: int | None = None
    ) -> list[tuple[int, bytes]]:
        """Raw bytes of the given messages (BODY.PEEK[]: the \\Seen flag is left alone).

        `expected`: their total RFC822.SIZE, when known: the deadline and the response
        budget grow with it (else with the sizes the server announces)."""
        if not uids:
            return []
        if expected is None:
            return await self._fetch_items(uids, "(UID BODY.PEEK[])")
        result: list[tuple[int, bytes]] = []
        sets = uid_chunks(uids)
        for uid_set, chunk in sets:  # almost always one set: split the expectation evenly
            share = expected * len(chunk) // max(1, len(uids))
            response = await self._fetch(uid_set, "(UID BODY.PEEK[])", share, body=True)
            result.extend(parse_bodies(response.lines))
        return result

    async def _fetch_items(
        self, uids: Sequence[int], items: str, each: int = 0
    ) -> list[tuple[int, bytes]]:
        result: list[tuple[int, bytes]] = []
        for uid_set, chunk in uid_chunks(uids):
            response = await self._fetch(uid_set, items, each * len(chunk), body=True)
            result.extend(parse_bodies(response.lines))
        return result

    async def _fetch(self, uid_set: str, items: str, expected: int, body: bool = False) -> Any:
        """One UID FETCH with its inactivity timer and its overall deadline.

        The deadline is `fetch_allowance` plus the bytes expected, or announced in
        literals if more, at `floor_rate`. A body fetch may receive about what it
        expects plus one literal of the largest size accepted (sizes are estimates)."""
        proto, limits = self._proto, self.endpoint.limits
        command = _Fetch(
            proto.new_tag(),
            uid_set,
            items,
            prefix="UID",
            loop=proto.loop,
            timeout=self.endpoint.timeout,
        )
        budget = max(limits.max_response, expected + expected // 4)
        if body:
            budget += self.endpoint.max_literal

        def deadline() -> float:
            return limits.fetch_allowance + max(expected, proto.announced) / limits.floor_rate

        response = await self._call(
            "UID FETCH", proto.execute(command), deadline=deadline, max_bytes=budget
        )
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
        proto.expect()
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
