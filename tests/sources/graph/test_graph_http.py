"""The Graph transport (sources.graph.http and .answers) against the Graph imitation.

Every rule of the transport has a test here: ImmutableId on every call, paging, delta rounds,
$value with its size cap, move and delete, $batch with throttled sub-requests, Retry-After on
429 and 503, 5xx and dropped connections (retried for GET only), the deadline, one token
refresh on 401, 403 advice, 410 on an expired delta token, at most 4 requests in flight per
mailbox, links to other hosts refused, and no token or body in errors and logs.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import ssl
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from engage_listener.errors import (
    AuthenticationError,
    ConnectionLostError,
    PermanentError,
    TransientError,
)
from engage_listener.sources.graph.answers import (
    DeltaExpired,
    GraphAccessDenied,
    GraphNotFound,
    GraphRequestError,
    GraphThrottled,
    ResponseTooLarge,
    mask,
)
from engage_listener.sources.graph.http import (
    BatchRequest,
    Exchange,
    GraphHttpSettings,
    GraphSession,
)
from tests.support.servers.graph_server import GraphServer, graph_server  # noqa: F401  (the fixture)
from tests.support.servers.oauth_server import OAuthTestServer

BOX = "support@contoso.test"
USER = f"/users/{BOX}"


def mail(number: int, size: int = 0) -> bytes:
    body = b"x" * size if size else f"Hello {number}".encode()
    head = f"From: Customer <c{number}@example.test>\r\nSubject: Mail {number}\r\n"
    return head.encode() + f"Message-ID: <{number}@test>\r\n\r\n".encode() + body + b"\r\n"


class Tokens:
    """The token callback: counts calls, records `force`, can hand out a bad token."""

    def __init__(self, server: GraphServer) -> None:
        self.server, self.calls, self.bad = server, [], False
        self.issued: list[str] = []

    async def __call__(self, force: bool) -> str:
        self.calls.append(force)
        token = "graph-at-unknown-token" if self.bad else self.server.issue_token()
        self.issued.append(token)
        return token


@pytest.fixture
def tokens(graph_server: GraphServer) -> Tokens:  # noqa: F811
    return Tokens(graph_server)


@pytest.fixture
async def session(graph_server: GraphServer, tokens: Tokens) -> AsyncIterator[GraphSession]:  # noqa: F811
    async with open_session(graph_server, tokens) as graph:
        yield graph


def open_session(server: GraphServer, tokens: Any, **changes: Any) -> GraphSession:
    values: dict[str, Any] = {"endpoint": server.endpoint, "ca_file": server.ca_file,
                              "deadline": 5.0, "trust_env": False}  # fmt: skip
    values.update(changes)
    return GraphSession(BOX, tokens, GraphHttpSettings(**values))


def raw(server: GraphServer, method: str, path: str, body: Any = None,
        prefer: str = "") -> tuple[int, Any]:  # fmt: skip
    """A bare request without the transport (to see the imitation's own behaviour)."""
    port = int(server.endpoint.split(":")[2].split("/")[0])
    context = ssl.create_default_context(cafile=str(server.ca_file))
    connection = http.client.HTTPSConnection("127.0.0.1", port, context=context)
    headers = {"Authorization": f"Bearer {server.issue_token()}"}
    if prefer:
        headers["Prefer"] = prefer
    connection.request(method, "/v1.0" + path, json.dumps(body) if body else None, headers)
    response = connection.getresponse()
    data = response.read()
    connection.close()
    return response.status, json.loads(data) if data else None


# ----- the imitation's shapes through the transport ----------------------------------------
async def test_folders_page_by_next_link_and_every_call_asks_for_immutable_ids(
    graph_server: GraphServer,  # noqa: F811
    session: GraphSession,
) -> None:
    graph_server.create_folder(BOX, "Inbox/New")
    pages = [p async for p in session.pages(f"{USER}/mailFolders", {"$top": "3"})]
    names = [f["displayName"] for page in pages for f in page["value"]]
    assert len(pages) == 3 and "@odata.nextLink" in pages[0] and "Inbox" in names
    inbox = next(f for page in pages for f in page["value"] if f["displayName"] == "Inbox")
    children = await session.get_json(f"{USER}/mailFolders/{inbox['id']}/childFolders")
    assert [f["displayName"] for f in children["value"]] == ["New"]
    created = await session.post_json(f"{USER}/mailFolders/inbox/childFolders",
                                      {"displayName": "Processed"})  # fmt: skip
    assert created["parentFolderId"] == inbox["id"]
    with pytest.raises(GraphRequestError) as duplicate:
        await session.post_json(f"{USER}/mailFolders/inbox/childFolders", {"displayName": "new"})
    assert duplicate.value.status == 409 and duplicate.value.code == "ErrorFolderExists"
    logged = graph_server.requests(path="/v1.0/users")
    assert len(logged) == 6
    assert all(r.headers["prefer"].startswith('IdType="ImmutableId"') for r in logged)


async def test_search_and_filter_as_graph_allows_them(
    graph_server: GraphServer,  # noqa: F811
    session: GraphSession,
) -> None:
    """The imitation's $search pages by skip token, newest first; like Graph it refuses
    $search with $filter or $orderby, an unquoted $search, and $filter with an $orderby
    on another property (InefficientFilter)."""
    for n in range(5):
        graph_server.append(BOX, "Inbox", mail(n))
    where = f"{USER}/mailFolders/inbox/messages"
    pages = [p async for p in session.pages(where, {"$search": '"subject:mail"',
                                                    "$top": "2"})]  # fmt: skip
    subjects = [m["subject"] for page in pages for m in page["value"]]
    assert len(pages) == 3 and "$skiptoken" in pages[0]["@odata.nextLink"]
    assert sorted(subjects, reverse=True) == subjects and len(subjects) == 5
    refused = [
        {"$search": '"subject:mail"', "$orderby": "receivedDateTime desc"},
        {"$search": '"subject:mail"', "$filter": "receivedDateTime ge 2020-01-01T00:00:00Z"},
        {"$search": "subject:mail"},
        {"$filter": "receivedDateTime ge 2020-01-01T00:00:00Z", "$orderby": "subject"},
    ]
    for query in refused:
        with pytest.raises(GraphRequestError) as caught:
            await session.get_json(where, query)
        assert caught.value.status == 400, query
    assert caught.value.code == "InefficientFilter"


async def test_delta_rounds_pages_then_changes_with_removed_entries(
    graph_server: GraphServer,  # noqa: F811
    session: GraphSession,
) -> None:
    ids = [graph_server.append(BOX, "Inbox", mail(n)) for n in range(5)]
    delta = f"{USER}/mailFolders/inbox/messages/delta"
    pages = [p async for p in session.pages(delta, {"$select": "subject"}, page_size=2)]
    assert [len(p["value"]) for p in pages] == [2, 2, 1]
    assert "@odata.deltaLink" in pages[-1] and "@odata.nextLink" not in pages[-1]
    assert [m["id"] for p in pages for m in p["value"]] == ids
    assert set(pages[0]["value"][0]) == {"@odata.etag", "id", "subject"}
    logged = graph_server.requests(path="messages/delta")
    assert all("odata.maxpagesize=2" in r.headers["prefer"] for r in logged)

    moved = await session.post_json(f"{USER}/messages/{ids[0]}/move",
                                    {"destinationId": "archive"})  # fmt: skip
    assert moved["id"] == ids[0]  # immutable: the id survives the move
    new = graph_server.append(BOX, "Inbox", mail(9))
    changes = [p async for p in session.pages(pages[-1]["@odata.deltaLink"])]
    rows = [m for p in changes for m in p["value"]]
    assert {m["id"] for m in rows} == {ids[0], new}
    assert next(m for m in rows if m["id"] == ids[0])["@removed"] == {"reason": "deleted"}
    again = [p async for p in session.pages(pages[-1]["@odata.deltaLink"])]  # links re-usable
    assert [m["id"] for p in again for m in p["value"]] == [m["id"] for m in rows]


async def test_regular_ids_change_on_a_move_immutable_ones_do_not(
    graph_server: GraphServer,  # noqa: F811
) -> None:
    graph_server.append(BOX, "Inbox", mail(1))
    _, listed = raw(graph_server, "GET", f"{USER}/mailFolders/inbox/messages")
    regular = listed["value"][0]["id"]
    status, moved = raw(graph_server, "POST", f"{USER}/messages/{regular}/move",
                        {"destinationId": "archive"})  # fmt: skip
    assert status == 201 and moved["id"] != regular
    assert raw(graph_server, "GET", f"{USER}/messages/{regular}")[0] == 404
    immutable = graph_server.messages(BOX, "Archive")[0].immutable_id
    status, again = raw(graph_server, "POST", f"{USER}/messages/{immutable}/move",
                        {"destinationId": "inbox"}, prefer='IdType="ImmutableId"')  # fmt: skip
    assert status == 201 and again["id"] == immutable


async def test_value_is_the_mime_text_capped_and_delete_moves_to_deleted_items(
    graph_server: GraphServer,  # noqa: F811
    session: GraphSession,
) -> None:
    big = mail(1, size=200_000)
    first = graph_server.append(BOX, "Inbox", big)
    assert await session.get_bytes(f"{USER}/messages/{first}/$value") == big
    with pytest.raises(ResponseTooLarge):
        await session.get_bytes(f"{USER}/messages/{first}/$value", max_bytes=100_000)
    query = {"$filter": "receivedDateTime ge 2000-01-01T00:00:00Z",
             "$orderby": "receivedDateTime asc", "$select": "subject"}  # fmt: skip
    listed = await session.get_json(f"{USER}/mailFolders/inbox/messages", query)
    assert [m["subject"] for m in listed["value"]] == ["Mail 1"]
    await session.delete(f"{USER}/messages/{first}")
    assert [m.mime for m in graph_server.messages(BOX, "Deleted Items")] == [big]
    with pytest.raises(GraphNotFound) as gone:
        await session.get_bytes(f"{USER}/messages/no-such-id/$value")
    assert gone.value.code == "ErrorItemNotFound"


async def test_batch_moves_retry_the_throttled_sub_requests(
    graph_server: GraphServer,  # noqa: F811
    session: GraphSession,
) -> None:
    ids = [graph_server.append(BOX, "Inbox", mail(n)) for n in range(6)]
    moves = [BatchRequest(str(n), "POST", f"{USER}/messages/{i}/move", {"destinationId": "archive"})
             for n, i in enumerate(ids)]  # fmt: skip
    answers = await session.batch(moves)
    assert {a.status for a in answers.values()} == {201}
    assert [answers[str(n)].body["id"] for n in range(6)] == ids
    assert len(graph_server.messages(BOX, "Archive")) == 6
    batches = graph_server.requests(path="$batch")
    assert len(batches) == 2  # 4 went through, 2 were throttled and sent again
    sub = graph_server.requests(path="/move")
    assert all(r.batched and r.headers["prefer"] == 'IdType="ImmutableId"' for r in sub)


async def test_batch_of_more_than_20_is_split_and_depends_on_is_sent(
    graph_server: GraphServer,  # noqa: F811
    session: GraphSession,
) -> None:
    graph_server.throttle_batches = False
    ids = [graph_server.append(BOX, "Inbox", mail(n)) for n in range(25)]
    gets = [BatchRequest(str(n), "GET", f"{USER}/messages/{i}", depends_on=[str(n - 1)] if n % 20
                         else []) for n, i in enumerate(ids)]  # fmt: skip
    answers = await session.batch(gets)
    assert len(answers) == 25 and {a.status for a in answers.values()} == {200}
    assert len(graph_server.requests(path="$batch")) == 2


# ----- throttling, faults, deadlines ----------------------------------------------------------
@pytest.mark.parametrize("kind", ["429", "503"])
async def test_throttled_answers_wait_for_retry_after(
    graph_server: GraphServer,  # noqa: F811
    session: GraphSession,
    kind: str,
) -> None:
    first = graph_server.append(BOX, "Inbox", mail(1))
    graph_server.fault(kind, path="/move", retry_after="1")
    started = time.monotonic()
    moved = await session.post_json(f"{USER}/messages/{first}/move", {"destinationId": "archive"})
    assert moved["id"] == first and time.monotonic() - started >= 1.0
    assert [r.status for r in graph_server.requests(path="/move")] == [int(kind), 201]


async def test_retries_are_bounded_and_a_long_retry_after_is_left_to_the_listener(
    graph_server: GraphServer,  # noqa: F811
    tokens: Tokens,
) -> None:
    graph_server.fault("429", path="mailFolders", retry_after="0", times=10)
    async with open_session(graph_server, tokens, max_retries=2) as graph:
        with pytest.raises(GraphThrottled) as still:
            await graph.get_json(f"{USER}/mailFolders")
    assert isinstance(still.value, TransientError) and still.value.status == 429
    assert len(graph_server.requests(path="mailFolders")) == 3
    graph_server.traffic.faults.clear()
    graph_server.fault("429", path="mailFolders", retry_after="3600")
    async with open_session(graph_server, tokens) as graph:
        started = time.monotonic()
        with pytest.raises(GraphThrottled) as long:
            await graph.get_json(f"{USER}/mailFolders")
    assert long.value.retry_after == 3600 and time.monotonic() - started < 1  # type: ignore[attr-defined]


async def test_server_errors_and_dropped_connections_retry_reads_only(
    graph_server: GraphServer,  # noqa: F811
    session: GraphSession,
) -> None:
    first = graph_server.append(BOX, "Inbox", mail(1, size=100_000))
    graph_server.fault("500", path="$value")
    graph_server.fault("drop", path="$value")
    graph_server.fault("reset", path="$value")
    assert await session.get_bytes(f"{USER}/messages/{first}/$value") == mail(1, size=100_000)
    assert len(graph_server.requests(path="$value")) == 4
    graph_server.fault("500", path="/move")
    with pytest.raises(GraphThrottled):  # a POST may have been carried out: not repeated
        await session.post_json(f"{USER}/messages/{first}/move", {"destinationId": "archive"})
    graph_server.fault("drop", path="/move")
    with pytest.raises(ConnectionLostError):
        await session.post_json(f"{USER}/messages/{first}/move", {"destinationId": "archive"})


async def test_deadline_covers_the_whole_answer(
    graph_server: GraphServer,  # noqa: F811
    tokens: Tokens,
) -> None:
    graph_server.fault("slow", path="mailFolders", delay=3.0)
    async with open_session(graph_server, tokens, deadline=0.3, max_retries=1) as graph:
        assert (await graph.get_json(f"{USER}/mailFolders"))["value"]  # slow once: retried
        graph_server.fault("slow", path="mailFolders", delay=3.0, times=2)
        started = time.monotonic()
        with pytest.raises(ConnectionLostError):
            await graph.get_json(f"{USER}/mailFolders")
        assert time.monotonic() - started < 2.5  # 2 x 0.3 s and 1 s backoff, not 2 x 3 s


async def test_at_most_four_requests_in_flight_per_mailbox(
    graph_server: GraphServer,  # noqa: F811
    session: GraphSession,
) -> None:
    ids = [graph_server.append(BOX, "Inbox", mail(n)) for n in range(16)]
    graph_server.fault("slow", path="$value", delay=0.2, times=16)
    bodies = await asyncio.gather(*(session.get_bytes(f"{USER}/messages/{i}/$value")
                                    for i in ids))  # fmt: skip
    assert bodies == [mail(n) for n in range(16)]
    assert graph_server.peak(BOX) == 4
    assert all(r.status == 200 for r in graph_server.requests(path="$value"))


async def test_the_imitation_throttles_a_fifth_concurrent_request(
    graph_server: GraphServer,  # noqa: F811
    tokens: Tokens,
) -> None:
    graph_server.append(BOX, "Inbox", mail(1))
    graph_server.fault("slow", path="mailFolders", delay=0.3, times=5)
    async with open_session(graph_server, tokens, max_concurrency=5, max_retries=0) as graph:
        results = await asyncio.gather(*(graph.get_json(f"{USER}/mailFolders")
                                         for _ in range(5)), return_exceptions=True)  # fmt: skip
    throttled = [r for r in results if isinstance(r, GraphThrottled)]
    assert len(throttled) == 1 and throttled[0].code == "ApplicationThrottled"


# ----- tokens, permissions, expired delta tokens -----------------------------------------
async def test_401_refreshes_the_token_once_then_gives_up(
    graph_server: GraphServer,  # noqa: F811
    session: GraphSession,
    tokens: Tokens,
) -> None:
    await session.get_json(f"{USER}/mailFolders")
    graph_server.expire_token(tokens.issued[-1])
    await session.get_json(f"{USER}/mailFolders")
    assert tokens.calls == [False, True]
    graph_server.expire_token(tokens.issued[-1])
    tokens.bad = True
    with pytest.raises(AuthenticationError) as refused:
        await session.get_json(f"{USER}/mailFolders")
    assert refused.value.code == "InvalidAuthenticationToken"  # type: ignore[attr-defined]
    assert tokens.calls == [False, True, True]
    assert not any(token in str(refused.value) for token in tokens.issued)


async def test_403_is_permanent_with_plain_advice(
    graph_server: GraphServer,  # noqa: F811
    session: GraphSession,
) -> None:
    graph_server.allow(BOX, False)
    with pytest.raises(GraphAccessDenied) as denied:
        await session.get_json(f"{USER}/mailFolders")
    text = str(denied.value)
    assert isinstance(denied.value, PermanentError) and denied.value.code == "ErrorAccessDenied"
    assert "Mail.ReadWrite" in text and "access policy" in text and "RBAC" in text
    graph_server.allow(BOX, True)
    graph_server.missing_permission = True
    with pytest.raises(GraphAccessDenied):
        await session.get_json(f"{USER}/mailFolders")


async def test_expired_delta_token_is_410_with_a_fresh_start(
    graph_server: GraphServer,  # noqa: F811
    session: GraphSession,
) -> None:
    graph_server.append(BOX, "Inbox", mail(1))
    delta = f"{USER}/mailFolders/inbox/messages/delta"
    pages = [p async for p in session.pages(delta)]
    graph_server.expire_delta_tokens()
    with pytest.raises(DeltaExpired) as expired:
        async for _ in session.pages(pages[-1]["@odata.deltaLink"]):
            pass
    assert expired.value.status == 410 and expired.value.code == "syncStateNotFound"
    restart = expired.value.restart_url  # type: ignore[attr-defined]
    assert [len(p["value"]) async for p in session.pages(restart)] == [1]


async def test_identity_provider_tokens_are_accepted(tmp_path: Path) -> None:
    with OAuthTestServer(tmp_path / "idp") as idp, GraphServer(tmp_path / "g", idp=idp) as graph:
        graph.add_mailbox(BOX)
        idp.add_ms_app("tenant-a", "app-1", secret="app-secret-1")
        form = {"grant_type": "client_credentials", "client_id": "app-1",
                "client_secret": "app-secret-1",
                "scope": "https://graph.microsoft.com/.default"}  # fmt: skip

        async def token(force: bool) -> str:
            with idp.lock:
                return str(idp.ms_token("tenant-a", form, "")[1]["access_token"])

        async with open_session(graph, token) as session:
            assert (await session.get_json(f"{USER}/mailFolders"))["value"]


# ----- what leaves the transport -----------------------------------------------------------
async def test_links_to_other_hosts_are_refused(session: GraphSession) -> None:
    with pytest.raises(GraphRequestError, match="another host"):
        await session.get_json("https://evil.example/v1.0/users/x/messages")


async def test_protocol_records_mask_state_tokens_and_errors_hold_no_secrets(
    graph_server: GraphServer,  # noqa: F811
    tokens: Tokens,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    graph_server.append(BOX, "Inbox", mail(1))
    records: list[Exchange] = []
    note: Callable[[Exchange], None] = records.append
    settings = GraphHttpSettings(graph_server.endpoint, graph_server.ca_file, trust_env=False)
    async with GraphSession(BOX, tokens, settings, on_exchange=note) as graph:
        pages = [p async for p in graph.pages(f"{USER}/mailFolders/inbox/messages/delta")]
        link = pages[-1]["@odata.deltaLink"]
        [p async for p in graph.pages(link)]
    token = link.split("$deltatoken=")[1]
    assert records[-1].path.endswith("$deltatoken=...") and token not in mask(link)
    assert all(r.status == 200 for r in records)
    printed = capsys.readouterr()
    for text in (caplog.text, printed.out, printed.err):
        assert not any(t in text for t in tokens.issued) and "Hello 1" not in text
