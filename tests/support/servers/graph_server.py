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
  search-query-parameter. The query options are in ``graph_query.py``, the mail store and
  the answers in ``graph_state.py``.
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
import datetime as dt
import json
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
from urllib.parse import parse_qs, quote, urlsplit

import pytest

from devkit.certs import write_certs as _write_certs
from tests.support.servers.graph_state import (
    Folder,
    GraphState,
    Mailbox,
    Message,
    Reply,
    error_body,
)
from tests.support.servers.oauth_server import OAuthTestServer

__all__ = ["Fault", "Folder", "GraphServer", "Logged", "Mailbox", "Message", "graph_server"]


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
