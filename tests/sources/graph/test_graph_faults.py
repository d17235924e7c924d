"""The Graph source through Graph's faults against the imitation: throttling, 5xx, dropped
connections, token refresh, access denied, a restart between commit and move, and the
4-requests-per-mailbox limit: nothing lost, nothing twice."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from engage_listener.errors import PermanentError
from engage_listener.sources.graph.answers import GraphAccessDenied, GraphThrottled
from engage_listener.store.sqlite.store import SqliteStore
from tests.support.graph import (
    BOX,
    DONE,
    NEW,
    Tokens,
    all_moved,
    arrange,
    cases,
    eventually,
    in_folder,
    ledger,
    make,
    stop,
)  # fmt: skip
from tests.support.servers.graph_server import GraphServer


# ----- Graph's faults -------------------------------------------------------------------
async def test_throttling_5xx_and_dropped_connections_lose_and_duplicate_nothing(
    tmp_path: Path,
    graph: GraphServer,
    store: SqliteStore,
    db: Path,
) -> None:
    listener, ids = arrange(tmp_path, graph, store, 6)
    graph.fault("429", path="/messages?", retry_after="1")  # the listing
    graph.fault("503", path="$value", retry_after="1")
    graph.fault("500", path="$value")
    graph.fault("drop", path="$value")
    graph.fault("reset", path="$value")
    began = time.monotonic()
    result = await listener.run_once()
    assert time.monotonic() - began >= 1.0  # Retry-After was honoured
    assert (result.ingested, result.done) == (6, 6) and all_moved(graph, db, ids)
    statuses = {r.status for r in graph.requests()}
    assert {429, 503, 500} <= statuses


async def test_throttled_past_the_retries_is_transient_and_the_next_batch_finishes(
    tmp_path: Path,
    graph: GraphServer,
    store: SqliteStore,
    db: Path,
) -> None:
    listener, ids = arrange(tmp_path, graph, store, 3)
    graph.fault("503", path="$value", times=50, retry_after="0")
    with pytest.raises(GraphThrottled):
        await listener.run_once()
    assert cases(db) == 0
    graph.traffic.faults.clear()
    await listener.run_once()
    assert all_moved(graph, db, ids)


async def test_an_expired_token_is_refreshed_once(
    tmp_path: Path,
    graph: GraphServer,
    store: SqliteStore,
    db: Path,
) -> None:
    tokens = Tokens(graph)
    listener, _ids = arrange(tmp_path, graph, store, 1, token=tokens)
    original = graph.issue_token

    def expiring(lifetime: float = 3600) -> str:  # the first token dies after the listing
        token = original(lifetime)
        if len(tokens.issued) == 0:
            asyncio.get_running_loop().call_later(0, graph.expire_token, token)
        return token

    graph.issue_token = expiring  # type: ignore[method-assign]
    await listener.run_once()
    assert cases(db) == 1
    assert tokens.calls == [False, True]
    assert 401 in {r.status for r in graph.requests()}


async def test_access_denied_is_permanent_with_advice(
    tmp_path: Path,
    graph: GraphServer,
    store: SqliteStore,
    db: Path,
) -> None:
    listener, _ids = arrange(tmp_path, graph, store, 1)
    graph.allow(BOX, False)
    with pytest.raises(GraphAccessDenied) as caught:
        await listener.run_once()
    assert isinstance(caught.value, PermanentError)
    assert "Mail.ReadWrite" in str(caught.value) and "access policy" in str(caught.value)
    task = asyncio.create_task(listener.run())
    try:
        await eventually(lambda: listener.state == "failing")
        assert "Mail.ReadWrite" in (listener.last_error or "")
    finally:
        await stop(listener, task)
    assert cases(db) == 0


# ----- exactly once and the per-mailbox limit --------------------------------------------
async def test_restart_after_commit_before_move_moves_without_a_second_case(
    tmp_path: Path,
    graph: GraphServer,
    store: SqliteStore,
    db: Path,
) -> None:
    listener, ids = arrange(tmp_path, graph, store, 5)
    graph.fault("500", path="$batch", times=10)  # the moves fail: a POST is not retried
    with pytest.raises(Exception):  # noqa: B017 - whichever Graph error ended it
        await listener.run_once()
    assert cases(db) == 5 and set(ledger(db).values()) == {"committed"}
    assert sorted(in_folder(graph, NEW)) == sorted(ids)
    graph.traffic.faults.clear()
    restarted = make(tmp_path / "again", graph, store)
    result = await restarted.run_once()
    assert (result.already_known, result.ingested, result.done) == (5, 0, 5)
    assert all_moved(graph, db, ids)


async def test_mails_moved_by_a_run_killed_before_it_recorded_the_move_are_recorded(
    tmp_path: Path,
    graph: GraphServer,
    store: SqliteStore,
    db: Path,
) -> None:
    """A kill -9 between `$batch`'s moves and `mark_done`: the mails are in the output
    folder, the ledger still says committed. The next batch records them moved (and only
    moves the ones still in the input folder), so no row stays committed."""
    listener, ids = arrange(tmp_path, graph, store, 5)
    graph.fault("500", path="$batch", times=10)
    with pytest.raises(Exception):  # noqa: B017 - whichever Graph error ended it
        await listener.run_once()
    graph.traffic.faults.clear()
    for moved in ids[:3]:  # the killed run's $batch had moved these
        graph.move(BOX, moved, DONE)
    assert set(ledger(db).values()) == {"committed"}
    restarted = make(tmp_path / "again", graph, store)
    result = await restarted.run_once()
    assert (result.already_known, result.ingested, result.done) == (2, 0, 2)
    assert all_moved(graph, db, ids)


async def test_no_more_than_four_requests_in_flight_per_mailbox(
    tmp_path: Path,
    graph: GraphServer,
    store: SqliteStore,
    db: Path,
) -> None:
    listener, ids = arrange(tmp_path, graph, store, 30)
    graph.fault("slow", path="$value", times=30, delay=0.05)
    await listener.run_once()
    assert all_moved(graph, db, ids)
    assert 2 <= graph.peak(BOX) <= 4  # fetches overlap, never past Outlook's limit
    assert 429 not in {r.status for r in graph.requests()}
