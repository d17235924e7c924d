"""A small Microsoft Graph (Outlook mail) on loopback over HTTPS, for the Graph source's tests.

It serves the endpoints the Graph source uses, with Microsoft's JSON shapes and status
codes, over TLS from a private CA (`devkit.certs.write_certs`, as the
identity-provider imitation in ``tests/support/servers/oauth_server.py`` does). Mailboxes
hold folder trees
and messages stored as raw MIME.

Behaviour and the documentation page it follows (learn.microsoft.com/graph/...):

* ``GET /users/{id}/mailFolders`` (the children of the root), ``.../mailFolders/{id}``,
  ``.../mailFolders/{id}/childFolders``; ``POST`` of either creates a folder (201; 409
  ``ErrorFolderExists`` on a duplicate name); well-known names ``inbox``, ``deleteditems``...
  accepted wherever a folder id is: api/user-list-mailfolders, api/mailfolder-list-childfolders,
  api/mailfolder-post-childfolders, api/resources/mailfolder (well-known folder names).
  Default page size 10, ``$top``, ``@odata.nextLink`` carrying ``$skip``: paging.
* ``GET .../mailFolders/{id}/messages`` with ``$top``, ``$select``, ``$orderby=receivedDateTime
  [asc|desc]``, ``$filter`` on ``receivedDateTime`` (``ge``/``gt``/``le``/``lt``/``eq``, ``and``;
  with another ``$orderby``: 400 ``InefficientFilter``), and ``$search`` (KQL ``from:``,
  ``subject:``, ``body:``, ``received>=``...; never with ``$filter`` or ``$orderby``; newest
  first, at most 1,000, paged by ``$skiptoken``): api/user-list-messages, query-parameters,
  search-query-parameter. The query options are in ``graph_query.py``.
* ``GET .../mailFolders/{id}/messages/delta``: ``$select``, ``Prefer: odata.maxpagesize=N``
  (default 10, echoed in ``Preference-Applied``), pages by ``@odata.nextLink`` (``$skiptoken``)
  and a final ``@odata.deltaLink`` (``$deltatoken``, never both in one page); the next round
  returns only changes, and messages moved out or deleted as ``{"id", "@removed": {"reason":
  "deleted"}}``: api/message-delta, delta-query-messages, delta-query-overview.
  An unknown or expired token answers **410 Gone** with error code ``syncStateNotFound`` and a
  ``Location`` header holding a fresh initial delta URL (delta-query-overview, "Synchronization
  reset" and token duration: Outlook tokens have no fixed lifetime, they fall out of a cache).
* ``GET /users/{id}/messages/{id}/$value``: the MIME text (api/message-get, "Get MIME content").
* ``POST /users/{id}/messages/{id}/move`` ``{"destinationId"}``: 201 with the moved message
  (api/message-move). Ids change on a move unless the request says ``Prefer:
  IdType="ImmutableId"`` (outlook-immutable-id); both forms address the message afterwards,
  an old regular id answers 404 ``ErrorItemNotFound``.
* ``DELETE /users/{id}/messages/{id}``: 204, the message goes to Deleted Items (api/message-delete).
* ``POST /$batch``: up to 20 requests, ``dependsOn`` (a failed dependency answers 424), each
  response ``{"id", "status", "headers", "body"}``, non-JSON bodies base64 (json-batching).
  Like Graph, sub-requests without ``dependsOn`` run in parallel, so past 4 for one mailbox
  they are throttled (429, ``Retry-After``) when ``throttle_batches`` is on (json-batching,
  known limitations; throttling-limits, Outlook service limits).
* Bearer tokens: 401 ``InvalidAuthenticationToken`` (with ``WWW-Authenticate``) for a missing,
  unknown or expired token; 403 ``ErrorAccessDenied`` for a mailbox outside the app's access
  policy (the RAOP message; app-only tokens only) or without the permission (errors,
  auth-limit-mailbox-access). A delegated token (the identity provider's, of a signed-in
  user) opens the user's own mailbox and shared mailboxes the user has Full Access to
  (`grant_full_access`; outlook-share-messages-folders: Mail.ReadWrite.Shared), else 403.
* Throttling: at most 4 concurrent requests per mailbox, more answer 429 ``ApplicationThrottled``
  "MailboxConcurrency" with ``Retry-After`` (throttling, throttling-limits#outlook-service-limits).
* Errors: ``{"error": {"code", "message", "innerError": {"date", "request-id",
  "client-request-id"}}}`` (errors).

Not imitated (the Graph source must not rely on them without a test elsewhere): hidden
folders, KQL beyond the restrictions above (OR, NOT, phrases, other properties),
``changeType``, ``$expand``, attachments as resources, ids in Graph's real format (ours
are random and case-sensitive, regular and immutable ids differ), the other throttling
limits (10,000 requests per 10 minutes, upload bytes), faults inside a
``$batch`` other than its throttling (scripted faults act on top-level requests). The docs
disagree on the expired-token answer (delta-query-overview: 410 with ``Location`` on a reset,
"a 40X-series error with syncStateNotFound" on expiry); we answer both at once: 410,
``syncStateNotFound``, ``Location``.

Tokens come from `issue_token` or, with ``idp=``, from the identity-provider imitation (any live
access token it issued). Faults are scripted with `fault`; every request is logged
(`requests`), and the highest number of concurrent requests per mailbox is kept (`peak`).
"""

from __future__ import annotations

import base64
import copy
import datetime as dt
import email
import email.policy
import json
import re
import secrets
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit

import pytest

from devkit.certs import write_certs as _write_certs
from tests.support.servers import graph_query
from tests.support.servers.oauth_server import OAuthTestServer

# ----- the mail store and the endpoints (called under the server's lock) ------------------
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


__all__ = ["Fault", "Folder", "GraphServer", "Logged", "Message", "graph_server"]


@dataclass
class Fault:
    """One scripted misbehaviour: the next `times` requests matching method and path get it.

    kind: "429", "503", "500" (an answer with that status, ``Retry-After`` for the first two),
    "drop" (headers and half the body, then the connection closes), "reset" (closed before
    any answer), "slow" (answered normally after `delay` seconds).
    """

    kind: str
    path: str = ""  # a substring of the path (query included)
    method: str = ""
    times: int = 1
    retry_after: str | None = "1"
    delay: float = 0.0


@dataclass(frozen=True)
class Logged:
    method: str
    path: str
    headers: dict[str, str]
    mailbox: str
    status: int
    started: float
    ended: float
    batched: bool = False  # a sub-request of a $batch


@dataclass
class _Traffic:
    log: list[Logged] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    inflight: dict[str, int] = field(default_factory=dict)
    peak: dict[str, int] = field(default_factory=dict)


class GraphServer:
    """The imitation; use as a context manager (the server runs in threads)."""

    host = "127.0.0.1"

    def __init__(self, directory: Path, idp: OAuthTestServer | None = None) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.ca_file, cert_file, key_file = _write_certs(directory)
        self.idp = idp
        self.lock = threading.RLock()
        self.state = GraphState()
        self.traffic = _Traffic()
        self.tokens: dict[str, float] = {}  # token -> expiry
        self.concurrency_limit = 4
        self.throttle_batches = True
        self.missing_permission = False  # the app lacks Mail.ReadWrite: 403 everywhere
        self._context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._context.load_cert_chain(cert_file, key_file)
        self._httpd = _TlsServer((self.host, 0), self._handler(), self._context)
        self._thread: threading.Thread | None = None

    # ----- life -----------------------------------------------------------------------
    @property
    def endpoint(self) -> str:
        """What `GraphEndpoint` would be: ``https://127.0.0.1:PORT/v1.0``."""
        return f"https://{self.host}:{self._httpd.server_address[1]}/v1.0"

    def start(self) -> GraphServer:
        self.state.endpoint = self.endpoint
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,),
                                        daemon=True)  # fmt: skip
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> GraphServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ----- what tests set up and look at ----------------------------------------------
    def add_mailbox(self, upn: str, *, allowed: bool = True) -> str:
        """A mailbox with the well-known folders; returns its user id. `allowed`: inside the
        app's access policy."""
        with self.lock:
            return self.state.add_mailbox(upn, allowed).user_id

    def grant_full_access(self, upn: str, user: str) -> None:
        """`user` may open the (shared) mailbox with a delegated token (Add-MailboxPermission
        -AccessRights FullAccess): Mail.ReadWrite.Shared then reaches it."""
        with self.lock:
            self.state.mailbox(upn).delegates.add(user.lower())

    def allow(self, upn: str, allowed: bool) -> None:
        """Put the mailbox inside (or outside) the app's application access policy."""
        with self.lock:
            self.state.mailbox(upn).allowed = allowed

    def create_folder(self, upn: str, path: str) -> str:
        """`path` of display names under the root (``Inbox/New``), made as needed: its id."""
        with self.lock:
            return self.state.ensure_path(self.state.mailbox(upn), path).id

    def folder_id(self, upn: str, path: str) -> str:
        with self.lock:
            return self.state.resolve_path(self.state.mailbox(upn), path).id

    def append(
        self, upn: str, folder: str, mime: bytes, received: dt.datetime | None = None
    ) -> str:
        """Deliver `mime` into `folder` (a path or well-known name): its immutable id."""
        with self.lock:
            box = self.state.mailbox(upn)
            return self.state.append(
                box, self.state.resolve_path(box, folder), mime, received
            ).immutable_id

    def messages(self, upn: str, folder: str) -> list[Message]:
        """The messages now in `folder`, oldest first (``.mime``, ``.immutable_id``...)."""
        with self.lock:
            box = self.state.mailbox(upn)
            target = self.state.resolve_path(box, folder)
            return sorted((m for m in box.messages.values() if m.folder_id == target.id),
                          key=lambda m: m.received)  # fmt: skip

    def move(self, upn: str, immutable_id: str, folder: str) -> None:
        """A person moves a message in Outlook (changes the regular id, as Exchange does)."""
        with self.lock:
            box = self.state.mailbox(upn)
            self.state.move(box, box.messages[immutable_id], self.state.resolve_path(box, folder))

    def expire_delta_tokens(self) -> None:
        """Every delta and skip token issued so far is forgotten: their use answers 410."""
        with self.lock:
            self.state.sync_states.clear()

    def issue_token(self, lifetime: float = 3600) -> str:
        token = "graph-at-" + secrets.token_urlsafe(24)
        with self.lock:
            self.tokens[token] = time.time() + lifetime
        return token

    def expire_token(self, token: str) -> None:
        with self.lock:
            self.tokens[token] = 0.0

    def fault(self, kind: str, **kwargs: Any) -> Fault:
        """Script a fault (see `Fault`); faults are matched in the order they were added."""
        item = Fault(kind, **kwargs)
        with self.lock:
            self.traffic.faults.append(item)
        return item

    def requests(self, path: str = "", method: str = "") -> list[Logged]:
        """The request log (``$batch`` sub-requests included, marked ``batched``)."""
        with self.lock:
            return [r for r in self.traffic.log
                    if path in r.path and (not method or r.method == method)]  # fmt: skip

    def peak(self, upn: str) -> int:
        """The most requests for this mailbox that were ever in flight at once."""
        with self.lock:
            return self.traffic.peak.get(self.state.mailbox(upn).user_id, 0)

    # ----- request handling (called from the handler threads) -------------------------
    def _token_ok(self, header: str) -> str | None:
        """None when the bearer token is good, else the 401 message."""
        token = header[7:] if header.startswith("Bearer ") else ""
        if not token:
            return "Access token is empty."
        now = time.time()
        with self.lock:
            expiry = self.tokens.get(token)
        if expiry is None and self.idp is not None:
            with self.idp.lock:
                expiry = self.idp.state.access.get(token, ("", None))[1]
        if expiry is None:
            return "IDX14100: JWT is not well formed, there are no dots (.)."
        return None if expiry > now else "Lifetime validation failed, the token is expired."

    def _signed_in_user(self, header: str) -> str:
        """The user of a delegated token from the identity provider, else "" (app-only)."""
        token = header[7:] if header.startswith("Bearer ") else ""
        if self.idp is None:
            return ""
        with self.idp.lock:
            if token in self.idp.state.app_only:
                return ""
            return self.idp.state.access.get(token, ("", 0.0))[0]

    def _take_fault(self, method: str, path: str) -> Fault | None:
        with self.lock:
            for item in self.traffic.faults:
                if item.times > 0 and item.path in path and item.method in ("", method):
                    item.times -= 1
                    return item
        return None

    def _enter(self, user_id: str) -> bool:
        with self.lock:
            now = self.traffic.inflight.get(user_id, 0) + 1
            self.traffic.inflight[user_id] = now
            self.traffic.peak[user_id] = max(self.traffic.peak.get(user_id, 0), now)
            return now <= self.concurrency_limit

    def _leave(self, user_id: str) -> None:
        with self.lock:
            self.traffic.inflight[user_id] -= 1

    def answer(self, method: str, target: str, headers: dict[str, str], body: bytes,
               batched: bool = False, delay: float = 0.0) -> Reply:  # fmt: skip
        """One request (top level or inside a batch) to its reply; logs it."""
        started = time.monotonic()
        path = urlsplit(target).path
        path = path[len("/v1.0") :] if path.startswith("/v1.0") else path
        user_id = ""
        denied = self._token_ok(headers.get("authorization", ""))
        if denied:
            challenge = {"WWW-Authenticate": 'Bearer realm="", error="invalid_token"'}
            reply = Reply(401, error_body("InvalidAuthenticationToken", denied), challenge)
        elif path == "/$batch" and method == "POST":
            reply = self._batch(headers, body)
        else:
            with self.lock:
                user_id = self.state.user_of(path)
            if user_id and not self._enter(user_id):
                self._leave(user_id)
                user_id = ""
                reply = Reply(429, error_body("ApplicationThrottled", "Application is over its "
                              "MailboxConcurrency limit."), {"Retry-After": "1"})  # fmt: skip
            else:
                time.sleep(delay)  # a slow answer is slow while it counts as in flight
                reply = self._route(method, target, headers, body)
        reply.leave = user_id
        with self.lock:
            self.traffic.log.append(Logged(method, target, dict(headers), user_id, reply.status,
                                           started, time.monotonic(), batched))  # fmt: skip
        return reply

    def _route(self, method: str, target: str, headers: dict[str, str], body: bytes) -> Reply:
        if self.missing_permission:
            return Reply(403, error_body("ErrorAccessDenied", "Access is denied. Check "
                                         "credentials and try again."))  # fmt: skip
        split = urlsplit(target)
        query = {k: v[-1] for k, v in parse_qs(split.query, keep_blank_values=True).items()}
        path = split.path.removeprefix("/v1.0")
        immutable = 'idtype="immutableid"' in headers.get("prefer", "").lower().replace(" ", "")
        try:
            payload = json.loads(body) if body else {}
        except ValueError:
            return Reply(400, error_body("BadRequest", "Unable to read JSON request payload."))
        user = self._signed_in_user(headers.get("authorization", ""))
        with self.lock:
            return self.state.route(method, path, query, payload, immutable,
                                    headers.get("prefer", ""), user)  # fmt: skip

    def _batch(self, headers: dict[str, str], body: bytes) -> Reply:
        try:
            requests = json.loads(body)["requests"]
        except (ValueError, KeyError, TypeError):
            return Reply(400, error_body("BadRequest", "Invalid batch payload format."))
        if len(requests) > 20:
            return Reply(400, error_body("BadRequest", "The number of batch requests exceeds "
                                         "the limit of 20."))  # fmt: skip
        done: dict[str, int] = {}
        per_mailbox: dict[str, int] = {}
        responses = []
        for item in requests:
            status, sub_headers, sub_body = self._batch_one(item, headers, done, per_mailbox)
            done[str(item["id"])] = status
            responses.append({"id": item["id"], "status": status, "headers": sub_headers,
                              "body": sub_body})  # fmt: skip
        return Reply(200, {"responses": responses})

    def _batch_one(self, item: dict[str, Any], outer: dict[str, str], done: dict[str, int],
                   per_mailbox: dict[str, int]) -> tuple[int, dict[str, str], Any]:  # fmt: skip
        needs = item.get("dependsOn") or []
        if any(done.get(str(d), 424) >= 400 for d in needs):
            return 424, {}, error_body("FailedDependency", "Failed dependency.")
        url = "/v1.0/" + str(item["url"]).lstrip("/")
        if not needs and self.throttle_batches:
            with self.lock:
                user_id = self.state.user_of(urlsplit(url).path.removeprefix("/v1.0"))
            per_mailbox[user_id] = per_mailbox.get(user_id, 0) + 1
            if user_id and per_mailbox[user_id] > self.concurrency_limit:
                return (
                    429,
                    {"Retry-After": "1"},
                    error_body(
                        "ApplicationThrottled", "Application is over its MailboxConcurrency limit."
                    ),
                )
        sub = {**outer, **{k.lower(): str(v) for k, v in (item.get("headers") or {}).items()}}
        data = json.dumps(item["body"]).encode() if "body" in item else b""
        reply = self.answer(str(item["method"]).upper(), url, sub, data, batched=True)
        if reply.leave:
            self._leave(reply.leave)
        out: Any = reply.body
        if isinstance(out, bytes):
            out = base64.b64encode(out).decode()
        return reply.status, {"Content-Type": reply.content_type, **reply.headers}, out

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as Graph

            def _serve(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                headers = {k.lower(): v for k, v in self.headers.items()}
                fault = server._take_fault(method, self.path)
                if fault is not None and fault.kind == "reset":
                    with server.lock:
                        server.traffic.log.append(Logged(method, self.path, headers, "", 0,
                                                         0.0, 0.0))  # fmt: skip
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if fault is not None and fault.kind in ("429", "503", "500"):
                    code = {"429": "TooManyRequests", "503": "ServiceUnavailable"}
                    extra = {"Retry-After": fault.retry_after} if fault.retry_after else {}
                    name = code.get(fault.kind, "generalException")
                    reply = Reply(int(fault.kind), error_body(name, "Injected fault."), extra)
                    with server.lock:
                        server.traffic.log.append(Logged(method, self.path, headers, "",
                                                         reply.status, 0.0, 0.0))  # fmt: skip
                else:
                    delay = fault.delay if fault is not None and fault.kind == "slow" else 0.0
                    reply = server.answer(method, self.path, headers, body, delay=delay)
                try:
                    self._write(reply, drop=fault is not None and fault.kind == "drop")
                finally:
                    if reply.leave:
                        server._leave(reply.leave)

            def _write(self, reply: Reply, drop: bool) -> None:
                out = reply.payload()
                self.send_response(reply.status)
                self.send_header("Content-Type", reply.content_type)
                self.send_header("Content-Length", str(len(out)))
                request_id = str(uuid.uuid4())
                self.send_header("request-id", request_id)
                self.send_header("client-request-id", request_id)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.end_headers()
                if drop:
                    self.wfile.write(out[: len(out) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.wfile.write(out)

            def do_GET(self) -> None:
                self._serve("GET")

            def do_POST(self) -> None:
                self._serve("POST")

            def do_DELETE(self) -> None:
                self._serve("DELETE")

            def do_PATCH(self) -> None:
                self._serve("PATCH")

            def log_message(self, format: str, *args: Any) -> None:
                pass  # keep the test output clean

        return Handler


class _TlsServer(ThreadingHTTPServer):
    """TLS per connection in the handler thread, so one slow handshake blocks nobody."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: Any, context: ssl.SSLContext) -> None:
        super().__init__(address, handler)
        self.context = context

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, address = self.socket.accept()
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # no 40 ms delayed-ACK waits
        return self.context.wrap_socket(sock, server_side=True,
                                        do_handshake_on_connect=False), address  # fmt: skip

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients that drop connections are part of the tests


def delta_url(endpoint: str, user: str, folder: str) -> str:
    return f"{endpoint}/users/{quote(user)}/mailFolders/{quote(folder)}/messages/delta"


@pytest.fixture
def graph_server(tmp_path: Path) -> Iterator[GraphServer]:
    """A started Graph imitation with one mailbox, ``support@contoso.test`` (tests add more)."""
    with GraphServer(tmp_path / "graph") as server:
        server.add_mailbox("support@contoso.test")
        yield server
