"""The Graph imitation's mailboxes, folders, messages and delta states, and its answers to
each request (pure data, no HTTP): what each endpoint follows in Microsoft's documentation
is listed in graph_server.py, the query options ($filter, $search) are in graph_query.py.
"""

from __future__ import annotations

import copy
import datetime as dt
import email
import email.policy
import json
import re
import secrets
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlencode

from tests.support.servers import graph_query

WELL_KNOWN = {
    "inbox": "Inbox", "deleteditems": "Deleted Items", "drafts": "Drafts",
    "sentitems": "Sent Items", "junkemail": "Junk Email", "archive": "Archive", "outbox": "Outbox",
}  # fmt: skip
_PAGE_SIZE = re.compile(r"odata\.maxpagesize=(\d+)")


def searchable(message: Message) -> dict[str, str]:
    """The texts ``$search`` looks in: the From header, the subject, the body."""
    parsed = email.message_from_bytes(message.mime, policy=email.policy.default)
    body = parsed.get_body(("plain", "html")) if parsed.is_multipart() else parsed
    try:
        text = body.get_content() if body is not None else ""  # type: ignore[union-attr]
    except (LookupError, KeyError):
        text = ""
    return {"from": str(parsed.get("From", "")), "subject": str(parsed.get("Subject", "")),
            "body": str(text)}  # fmt: skip


def error_body(code: str, message: str) -> dict[str, Any]:
    """Graph's error JSON (learn.microsoft.com/graph/errors)."""
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
    inner = {"date": now, "request-id": str(uuid.uuid4()), "client-request-id": str(uuid.uuid4())}
    return {"error": {"code": code, "message": message, "innerError": inner}}


@dataclass
class Reply:
    status: int
    body: dict[str, Any] | bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/json"
    leave: str = ""  # the mailbox whose in-flight count drops once this is written

    def payload(self) -> bytes:
        if self.body is None:
            return b""
        return self.body if isinstance(self.body, bytes) else json.dumps(self.body).encode()


def _id(prefix: str) -> str:
    return prefix + secrets.token_urlsafe(33).replace("-", "_")


@dataclass
class Folder:
    id: str
    name: str
    parent_id: str
    well_known: str = ""


@dataclass
class Message:
    immutable_id: str
    rest_id: str  # the regular id; Exchange gives a new one on every move
    folder_id: str
    mime: bytes
    received: dt.datetime
    seq: int  # the change that last touched it (delta rounds compare against it)
    order: int


@dataclass
class Mailbox:
    user_id: str
    upn: str
    allowed: bool
    folders: dict[str, Folder] = field(default_factory=dict)
    messages: dict[str, Message] = field(default_factory=dict)  # by immutable id
    rest_ids: dict[str, str] = field(default_factory=dict)  # current regular id -> immutable
    removed: list[tuple[int, str, Message]] = field(default_factory=list)  # seq, folder, copy
    delegates: set[str] = field(default_factory=set)  # users with Full Access (lower case)


@dataclass
class SyncState:
    folder_id: str
    since: int  # changes after this sequence number belong to the next round
    select: str
    filter: str
    remaining: list[dict[str, Any]] | None = None  # a skip token: the rest of this round


class GraphState:
    """Mailboxes, folders, messages and delta sync states; pure data, no HTTP."""

    def __init__(self) -> None:
        self.endpoint = ""
        self.mailboxes: dict[str, Mailbox] = {}
        self.seq = 0
        self.sync_states: dict[str, SyncState] = {}

    # ----- set-up helpers -------------------------------------------------------------
    def add_mailbox(self, upn: str, allowed: bool) -> Mailbox:
        box = Mailbox(str(uuid.uuid4()), upn, allowed)
        root = Folder(_id("AAMkAGR"), "Top of Information Store", "", "msgfolderroot")
        box.folders[root.id] = root
        for key, name in WELL_KNOWN.items():
            folder = Folder(_id("AAMkAGR"), name, root.id, key)
            box.folders[folder.id] = folder
        self.mailboxes[box.user_id] = box
        return box

    def mailbox(self, user: str) -> Mailbox:
        for box in self.mailboxes.values():
            if user in (box.user_id, box.upn) or user.lower() == box.upn.lower():
                return box
        raise KeyError(user)

    def user_of(self, path: str) -> str:
        parts = path.strip("/").split("/")
        if len(parts) < 2 or parts[0] != "users":
            return ""
        try:
            return self.mailbox(unquote(parts[1])).user_id
        except KeyError:
            return ""

    def folder(self, box: Mailbox, key: str) -> Folder | None:
        found = box.folders.get(key)
        return found or next((f for f in box.folders.values() if f.well_known == key.lower()
                              and key), None)  # fmt: skip

    def children(self, box: Mailbox, parent: Folder) -> list[Folder]:
        return [f for f in box.folders.values() if f.parent_id == parent.id]

    def resolve_path(self, box: Mailbox, path: str) -> Folder:
        found = self.folder(box, path)
        if found is not None:
            return found
        node = self.folder(box, "msgfolderroot")
        assert node is not None
        for name in path.strip("/").split("/"):
            node = next(f for f in self.children(box, node) if f.name.lower() == name.lower())
        return node

    def ensure_path(self, box: Mailbox, path: str) -> Folder:
        node = self.folder(box, "msgfolderroot")
        assert node is not None
        for name in path.strip("/").split("/"):
            match = [f for f in self.children(box, node) if f.name.lower() == name.lower()]
            node = match[0] if match else self.new_folder(box, node, name)
        return node

    def new_folder(self, box: Mailbox, parent: Folder, name: str) -> Folder:
        folder = Folder(_id("AAMkAGR"), name, parent.id)
        box.folders[folder.id] = folder
        return folder

    def append(self, box: Mailbox, folder: Folder, mime: bytes,
               received: dt.datetime | None) -> Message:  # fmt: skip
        self.seq += 1
        when = (received or dt.datetime.now(dt.UTC)).astimezone(dt.UTC).replace(microsecond=0)
        message = Message(_id("AAkALgA"), _id("AAMkAGI"), folder.id, mime, when, self.seq, self.seq)
        box.messages[message.immutable_id] = message
        box.rest_ids[message.rest_id] = message.immutable_id
        return message

    def move(self, box: Mailbox, message: Message, target: Folder) -> None:
        self.seq += 1
        box.removed.append((self.seq, message.folder_id, copy.copy(message)))
        del box.rest_ids[message.rest_id]
        message.rest_id, message.folder_id, message.seq = _id("AAMkAGI"), target.id, self.seq
        box.rest_ids[message.rest_id] = message.immutable_id

    # ----- JSON shapes ----------------------------------------------------------------
    def folder_json(self, box: Mailbox, folder: Folder) -> dict[str, Any]:
        inside = [m for m in box.messages.values() if m.folder_id == folder.id]
        return {
            "id": folder.id, "displayName": folder.name, "parentFolderId": folder.parent_id,
            "childFolderCount": len(self.children(box, folder)), "unreadItemCount": len(inside),
            "totalItemCount": len(inside), "sizeInBytes": sum(len(m.mime) for m in inside),
            "isHidden": False,
        }  # fmt: skip

    def message_json(self, message: Message, immutable: bool, select: str = "") -> dict[str, Any]:
        headers = email.message_from_bytes(message.mime, policy=email.policy.default)
        sender = headers.get("From")
        address = sender.addresses[0] if sender and sender.addresses else None
        stamp = message.received.strftime("%Y-%m-%dT%H:%M:%SZ")
        full: dict[str, Any] = {
            "@odata.etag": f'W/"CQAAABYAAA{message.seq:08d}"',
            "id": message.immutable_id if immutable else message.rest_id,
            "createdDateTime": stamp, "lastModifiedDateTime": stamp, "receivedDateTime": stamp,
            "changeKey": f"CQAAABYAAA{message.seq:08d}", "subject": str(headers.get("Subject", "")),
            "internetMessageId": str(headers.get("Message-ID", "")),
            "parentFolderId": message.folder_id, "isRead": False, "hasAttachments": False,
            "from": {"emailAddress": {"name": address.display_name if address else "",
                                      "address": address.addr_spec if address else ""}},
        }  # fmt: skip
        if not select:
            return full
        keep = {"@odata.etag", "id", *select.split(",")}
        return {k: v for k, v in full.items() if k in keep}

    # ----- routing --------------------------------------------------------------------
    def route(self, method: str, path: str, query: dict[str, str], payload: dict[str, Any],
              immutable: bool, prefer: str, user: str = "") -> Reply:  # fmt: skip
        """`user`: the signed-in user of a delegated token ("" for app-only tokens)."""
        parts = [unquote(p) for p in path.strip("/").split("/")]
        if len(parts) < 3 or parts[0] != "users":
            return Reply(400, error_body("BadRequest", f"Resource not found for the segment "
                                         f"'{parts[0]}'."))  # fmt: skip
        try:
            box = self.mailbox(parts[1])
        except KeyError:
            return Reply(404, error_body("ErrorInvalidUser", f"The requested user '{parts[1]}' "
                                         "is invalid."))  # fmt: skip
        if user and user.lower() != box.upn.lower() and user.lower() not in box.delegates:
            return Reply(403, error_body("ErrorAccessDenied", "Access is denied. Check "
                                         "credentials and try again."))  # fmt: skip
        if not box.allowed and not user:  # an access policy limits apps, not users
            return Reply(
                403,
                error_body(
                    "ErrorAccessDenied",
                    "Access to OData is disabled: "
                    "[RAOP] : Blocked by tenant configured AppOnly AccessPolicy settings.",
                ),
            )
        rest, base = parts[2:], f"{self.endpoint}{path}"
        if rest[0] == "mailFolders":
            return self._folders(box, method, rest[1:], query, payload, immutable, prefer, base)
        if rest[0] == "messages" and len(rest) >= 2:
            return self._message(box, method, rest[1:], payload, immutable)
        return Reply(400, error_body("BadRequest", f"Resource not found for the segment "
                                     f"'{rest[0]}'."))  # fmt: skip

    def _folders(self, box: Mailbox, method: str, rest: list[str], query: dict[str, str],
                 payload: dict[str, Any], immutable: bool, prefer: str,
                 base: str) -> Reply:  # fmt: skip
        folder = self.folder(box, rest[0] if rest else "msgfolderroot")
        if folder is None:
            return Reply(404, error_body("ErrorItemNotFound", "The specified object was not "
                                         "found in the store."))  # fmt: skip
        tail = rest[1:] if rest else ["childFolders"]
        if tail == [] and method == "GET":
            return Reply(200, self.folder_json(box, folder))
        if tail == ["childFolders"] and method == "GET":
            rows = [self.folder_json(box, f) for f in self.children(box, folder)]
            return Reply(200, self._page(rows, query, base))
        if tail == ["childFolders"] and method == "POST":
            return self._create(box, folder, payload)
        if tail == ["messages"] and method == "GET":
            return self._list(box, folder, query, immutable, base)
        if tail == ["messages", "delta"] and method == "GET":
            return self._delta(box, folder, query, immutable, prefer, base)
        return Reply(405, error_body("BadRequest", "Unsupported request."))

    def _create(self, box: Mailbox, parent: Folder, payload: dict[str, Any]) -> Reply:
        name = str(payload.get("displayName", ""))
        if not name:
            return Reply(400, error_body("ErrorInvalidRequest", "displayName is required."))
        if any(f.name.lower() == name.lower() for f in self.children(box, parent)):
            return Reply(409, error_body("ErrorFolderExists", "A folder with the specified name "
                                         "already exists."))  # fmt: skip
        return Reply(201, self.folder_json(box, self.new_folder(box, parent, name)))

    def _page(self, rows: list[dict[str, Any]], query: dict[str, str], base: str) -> dict[str, Any]:
        top, skip = int(query.get("$top") or 10), int(query.get("$skip") or 0)
        page: dict[str, Any] = {"@odata.context": f"{self.endpoint}/$metadata#Collection",
                                "value": rows[skip: skip + top]}  # fmt: skip
        if skip + top < len(rows):
            page["@odata.nextLink"] = base + "?" + urlencode({**query, "$skip": skip + top},
                                                             safe="$,:")  # fmt: skip
        return page

    def _matching(self, box: Mailbox, folder: Folder, where: str) -> list[Message] | None:
        found = sorted((m for m in box.messages.values() if m.folder_id == folder.id),
                       key=lambda m: (m.received, m.order))  # fmt: skip
        if not where:
            return found
        clauses = graph_query.parse_filter(where)
        if clauses is None:
            return None
        return [m for m in found if graph_query.passes(m.received, clauses)]

    def _list(self, box: Mailbox, folder: Folder, query: dict[str, str], immutable: bool,
              base: str) -> Reply:  # fmt: skip
        if "$search" in query:
            return self._search(box, folder, query, immutable, base)
        order = query.get("$orderby", "receivedDateTime desc")
        if query.get("$filter") and not order.startswith("receivedDateTime"):
            return Reply(400, error_body("InefficientFilter", "The restriction or sort order "
                                         "is too complex for this operation."))  # fmt: skip
        found = self._matching(box, folder, query.get("$filter", ""))
        if found is None:
            return Reply(400, error_body("BadRequest", "Invalid filter clause."))
        if order.endswith("desc"):
            found.reverse()
        rows = [self.message_json(m, immutable, query.get("$select", "")) for m in found]
        return Reply(200, self._page(rows, query, base))

    def _search(self, box: Mailbox, folder: Folder, query: dict[str, str], immutable: bool,
                base: str) -> Reply:  # fmt: skip
        """``$search`` (see graph_query): newest first, at most 1,000, paged by a skip
        token; with ``$filter`` or ``$orderby`` refused, as Graph refuses them."""
        for option in ("$filter", "$orderby"):
            if option in query:
                return Reply(400, error_body("ErrorInvalidUrlQuery", f"The query parameter "
                             f"'{option}' is not supported with '$search'."))  # fmt: skip
        search = graph_query.parse_search(query["$search"])
        if search is None:
            return Reply(400, error_body("BadRequest", "Syntax error: the $search value "
                                         "must be a quoted KQL query."))  # fmt: skip
        found = [m for m in sorted(self._matching(box, folder, "") or [],
                                   key=lambda m: (m.received, m.order), reverse=True)
                 if graph_query.found(search, searchable(m), m.received)]  # fmt: skip
        rows = [self.message_json(m, immutable, query.get("$select", ""))
                for m in found[: graph_query.SEARCH_CAP]]  # fmt: skip
        skip = int(query.get("$skiptoken") or 0)
        top = int(query.get("$top") or 10)
        page: dict[str, Any] = {"@odata.context": f"{self.endpoint}/$metadata#Collection",
                                "value": rows[skip : skip + top]}  # fmt: skip
        if skip + top < len(rows):
            rest = {k: v for k, v in query.items() if k != "$skiptoken"}
            page["@odata.nextLink"] = base + "?" + urlencode({**rest, "$skiptoken": skip + top},
                                                             safe="$,:\"")  # fmt: skip
        return Reply(200, page)

    def _delta(self, box: Mailbox, folder: Folder, query: dict[str, str], immutable: bool,
               prefer: str, base: str) -> Reply:  # fmt: skip
        token = query.get("$deltatoken") or query.get("$skiptoken")
        state = self.sync_states.get(token) if token else None  # links may be used again
        if token and (state is None or state.folder_id != folder.id):
            return Reply(410, error_body("syncStateNotFound", "The sync state generation is not "
                         "found. The delta token is expired and data must be synchronized "
                         "again."), {"Location": base})  # fmt: skip
        if state is None:
            state = SyncState(folder.id, 0, query.get("$select", ""), query.get("$filter", ""))
        state = copy.copy(state)
        if state.remaining is None:
            state.remaining = self._changes(box, folder, state, immutable)
            state.since = self.seq
        if state.remaining is None:
            return Reply(400, error_body("BadRequest", "Invalid filter clause."))
        match = _PAGE_SIZE.search(prefer)
        size = int(match.group(1)) if match else 10
        rows, state.remaining = state.remaining[:size], state.remaining[size:]
        token = secrets.token_urlsafe(24)
        page: dict[str, Any] = {"@odata.context": f"{self.endpoint}/$metadata#Collection(message)",
                                "value": rows}  # fmt: skip
        if state.remaining:
            page["@odata.nextLink"] = f"{base}?$skiptoken={token}"
        else:
            state.remaining = None
            page["@odata.deltaLink"] = f"{base}?$deltatoken={token}"
        self.sync_states[token] = state
        headers = {"Preference-Applied": f"odata.maxpagesize={size}"} if match else {}
        return Reply(200, page, headers)

    def _changes(self, box: Mailbox, folder: Folder, state: SyncState,
                 immutable: bool) -> list[dict[str, Any]] | None:  # fmt: skip
        found = self._matching(box, folder, state.filter)
        if found is None:
            return None
        rows = [self.message_json(m, immutable, state.select) for m in found if m.seq > state.since]
        if state.since:
            for seq, left, old in box.removed:
                current = box.messages.get(old.immutable_id)
                if (
                    seq > state.since
                    and left == folder.id
                    and (current is None or current.folder_id != left)
                ):
                    rows.append({"@odata.type": "#microsoft.graph.message",
                                 "id": old.immutable_id if immutable else old.rest_id,
                                 "@removed": {"reason": "deleted"}})  # fmt: skip
        return rows

    def _message(self, box: Mailbox, method: str, rest: list[str], payload: dict[str, Any],
                 immutable: bool) -> Reply:  # fmt: skip
        key = box.rest_ids.get(rest[0], rest[0])
        message = box.messages.get(key)
        if message is None:
            return Reply(404, error_body("ErrorItemNotFound", "The specified object was not "
                                         "found in the store."))  # fmt: skip
        tail = rest[1:]
        if tail == [] and method == "GET":
            return Reply(200, self.message_json(message, immutable))
        if tail == ["$value"] and method == "GET":
            return Reply(200, message.mime, content_type="text/plain")
        if tail == ["move"] and method == "POST":
            target = self.folder(box, str(payload.get("destinationId", "")))
            if target is None:
                return Reply(404, error_body("ErrorItemNotFound", "The specified object was not "
                                             "found in the store."))  # fmt: skip
            self.move(box, message, target)
            return Reply(201, self.message_json(message, immutable))
        if tail == [] and method == "DELETE":
            bin_ = self.folder(box, "deleteditems")
            assert bin_ is not None
            self.move(box, message, bin_)
            if message.folder_id == box.removed[-1][1]:  # it was in Deleted Items already
                del box.messages[message.immutable_id], box.rest_ids[message.rest_id]
            return Reply(204)
        return Reply(405, error_body("BadRequest", "Unsupported request."))
