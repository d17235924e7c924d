"""The Graph source end to end against the Graph imitation: configuration -> listener ->
cases in the store, mail moved or deleted, the batch triggers, an expired delta token,
status and reset (the faults are in test_graph_faults.py).

Each listener is built from a configuration file as the daemon builds it
(`service.build_graph.build_graph_listener`); tokens come from the imitation through an
injected token callback, except in the test that signs in at the identity-provider
imitation as the daemon does.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from pathlib import Path

import pytest

from engage_listener.clock import SystemClock
from engage_listener.config.load import load_config
from engage_listener.intake.control import read_control, request_date
from engage_listener.observe.status import read_status, write_heartbeats
from engage_listener.service.build_graph import build_graph_listener
from engage_listener.store.sqlite.store import SqliteStore
from tests.support.config_xml import WITH_GRAPH, graph_xml, write_config
from tests.support.graph import (
    BOX,
    DONE,
    NEW,
    all_moved,
    arrange,
    cases,
    deliver,
    eventually,
    in_folder,
    ledger,
    mail,
    make,
    start,
    stop,
)  # fmt: skip
from tests.support.helpers import db_rows
from tests.support.servers.graph_server import GraphServer
from tests.support.servers.oauth_server import OAuthTestServer, token_cache


# ----- the cycle ------------------------------------------------------------------------
async def test_mail_becomes_cases_and_is_moved(
    tmp_path: Path,
    graph: GraphServer,
    store: SqliteStore,
    db: Path,
) -> None:
    listener, ids = arrange(tmp_path, graph, store, 3)
    result = await listener.run_once()
    assert (result.found, result.ingested, result.done) == (3, 3, 3)
    assert in_folder(graph, NEW) == []
    assert all_moved(graph, db, ids)  # the ledger is keyed by the immutable ids
    assert all('IdType="ImmutableId"' in r.headers.get("prefer", "")
               for r in graph.requests("/users/"))  # fmt: skip
    again = await listener.run_once()
    assert (again.found, cases(db)) == (0, 3)


async def test_without_output_folder_mail_goes_to_deleted_items(
    tmp_path: Path,
    graph: GraphServer,
    store: SqliteStore,
    db: Path,
) -> None:
    listener, ids = arrange(tmp_path, graph, store, 2, OutputFolder="")
    await listener.run_once()
    assert cases(db) == 2
    assert sorted(in_folder(graph, "deleteditems")) == sorted(ids)
    assert ledger(db) == dict.fromkeys(ids, "deleted")


async def test_well_known_input_folder_and_default_error_folder(
    tmp_path: Path,
    graph: GraphServer,
    store: SqliteStore,
    db: Path,
) -> None:
    """InputFolder absent is the inbox; an oversize mail is quarantined from what the
    listing says, never fetched, and goes to a created Error folder."""
    listener = make(tmp_path, graph, store, InputFolder="", MaxMessageSize="5000")
    small = graph.append(BOX, "inbox", mail(1))
    big = graph.append(BOX, "inbox", mail(2, size=20000))
    result = await listener.run_once()
    assert (result.ingested, result.quarantined) == (1, 1)
    assert in_folder(graph, DONE) == [small]
    assert in_folder(graph, "Error") == [big]
    reason, raw = db_rows(db, "SELECT reason, raw FROM quarantine")[0]
    assert reason.startswith("oversize") and b"Subject: Question 2" in raw
    assert ledger(db) == {small: "moved", big: "quarantined"}


async def test_signs_in_at_the_identity_provider_and_logs_the_protocol(
    tmp_path: Path,
    graph: GraphServer,
    store: SqliteStore,
    db: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No injected token: the daemon's own path (msal client credentials, scope the Graph
    origin + /.default) at the identity-provider imitation, which the Graph imitation
    trusts; the protocol log holds request lines and statuses, never a token."""
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path / "state"))  # the token cache
    with OAuthTestServer(tmp_path / "idp") as idp:
        graph.idp = idp
        idp.add_ms_app("tenant-a", "app-graph", secret="graph-app-secret", mailbox=BOX)
        auth = {"Type": "Microsoft", "TenantId": "tenant-a", "ClientId": "app-graph",
                "ClientSecret": "plain:graph-app-secret", "Authority": idp.authority,
                "CaFile": str(idp.ca_file)}  # fmt: skip
        graph.create_folder(BOX, NEW)
        graph.create_folder(BOX, DONE)
        _cache, key = token_cache(tmp_path / "state")
        log = tmp_path / "graph-%listener%.log"
        xml = graph_xml(graph.endpoint, graph.ca_file, BOX, auth=auth,
                        ProtocolLogFile=str(log))  # fmt: skip
        path = write_config(tmp_path / "graph.xml", xml, process=WITH_GRAPH, key_file=key)
        cfg = load_config(path).graph_listeners[0]
        listener = build_graph_listener(cfg, store, SystemClock(), asyncio.Event())
        graph.append(BOX, NEW, mail(1))
        await listener.run_once()
        assert cases(db) == 1
        tokens = idp.issued
    text = (tmp_path / "graph-Graph.log").read_text()
    assert "C: GET /v1.0/users/support@contoso.test/mailFolders" in text
    assert "S: 200" in text and "C: POST /v1.0/$batch" in text
    assert not any(token in text for token in tokens if token)


# ----- the batch triggers ---------------------------------------------------------------
async def test_batch_starts_on_the_count(
    tmp_path: Path,
    graph: GraphServer,
    store: SqliteStore,
    db: Path,
) -> None:
    listener = make(tmp_path, graph, store)
    task = await start(listener, poll_seconds=0.1, sync_max_wait_time=600.0,
                       sync_max_changes_count=3)  # fmt: skip
    try:
        deliver(graph, 2)
        await asyncio.sleep(1.0)
        assert (listener.batches, listener.pending) == (1, 2)  # below the count: waits
        graph.append(BOX, NEW, mail(2))
        await eventually(lambda: listener.batches == 2)
        assert cases(db) == 3 and not in_folder(graph, NEW)
    finally:
        await stop(listener, task)


async def test_batch_starts_on_the_time(
    tmp_path: Path,
    graph: GraphServer,
    store: SqliteStore,
    db: Path,
) -> None:
    listener = make(tmp_path, graph, store)
    task = await start(listener, poll_seconds=0.1, sync_max_wait_time=1.0,
                       sync_max_changes_count=10)  # fmt: skip
    try:
        graph.append(BOX, NEW, mail(1))
        began = time.monotonic()
        await eventually(lambda: cases(db) == 1 and not in_folder(graph, NEW))
        assert time.monotonic() - began >= 1.0  # waited SyncMaxWaitTime for more
    finally:
        await stop(listener, task)


async def test_expired_delta_token_resyncs_without_duplicates(
    tmp_path: Path,
    graph: GraphServer,
    store: SqliteStore,
    db: Path,
) -> None:
    """A 410 starts the folder over; mail already taken (a person moved it back into the
    input folder) is only moved again, new mail becomes its case."""
    listener = make(tmp_path, graph, store)
    first = graph.append(BOX, NEW, mail(1))
    task = await start(listener, poll_seconds=0.1, sync_max_wait_time=600.0,
                       sync_max_changes_count=10)  # fmt: skip
    try:
        assert cases(db) == 1
        graph.expire_delta_tokens()
        graph.move(BOX, first, NEW)  # back in the input folder
        graph.append(BOX, NEW, mail(2))
        await eventually(lambda: cases(db) == 2 and not in_folder(graph, NEW))
        assert graph.requests("delta")[-1].status == 200
        assert any(r.status == 410 for r in graph.requests("delta"))
        assert len(in_folder(graph, DONE)) == 2
    finally:
        await stop(listener, task)
    assert cases(db) == 2


async def test_status_of_a_graph_listener(
    tmp_path: Path, graph: GraphServer, store: SqliteStore
) -> None:
    """The heartbeat the daemon writes, read back as `engage-listener status` reads it: a
    mail found by delta and waiting for its batch is the backlog, with its age."""
    listener = make(tmp_path, graph, store)
    task = await start(listener, poll_seconds=0.1, sync_max_wait_time=600.0)
    try:
        graph.append(BOX, NEW, mail(1))
        await eventually(lambda: listener.pending == 1)
        await write_heartbeats(store, {"Graph": listener})
        (row,) = await read_status(store, ["Graph"])
    finally:
        await stop(listener, task)
    assert (row.state, row.backlog) == ("idle", 1)
    assert row.last_success_at is not None
    assert row.oldest_unprocessed_age is not None


async def test_reset_to_a_past_day_ingests_what_the_ledger_lacks_in_the_output_folder(
    tmp_path: Path, graph: GraphServer, store: SqliteStore, db: Path
) -> None:
    """Mail moved to the output folder by hand (or before a restore of the store) becomes
    its case and stays there; mail the ledger has is not taken twice; older mail is left."""
    listener = make(tmp_path, graph, store)
    taken = graph.append(BOX, NEW, mail(1))
    await listener.run_once()
    by_hand = graph.append(BOX, DONE, mail(2))
    old = graph.append(BOX, DONE, mail(3), received=dt.datetime(2020, 5, 1, tzinfo=dt.UTC))
    yesterday = dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1)
    await request_date(store, "Graph", yesterday, "UTC", dt.datetime.now(dt.UTC))
    await listener.run_once()
    assert cases(db) == 2
    assert ledger(db) == {taken: "moved", by_hand: "moved"}  # it is in the output folder
    assert sorted(in_folder(graph, DONE)) == sorted([taken, by_hand, old])
    assert (await read_control(store, "Graph", dt.datetime.now(dt.UTC))).reset_from is None


# ----- ReadFromDate, Rules and CustomerFrom -----------------------------------------------
async def test_read_from_date_leaves_older_mail_and_a_reset_takes_it(
    tmp_path: Path, graph: GraphServer, store: SqliteStore, db: Path
) -> None:
    """Mail received before ReadFromDate (00:00 in TimeZone) stays in the input folder,
    unread, batch after batch; `reset --date` to an earlier day lowers it, and the next
    batch takes that mail as IMAP would."""
    listener = make(tmp_path, graph, store, ReadFromDate="2026-06-01",
                    TimeZone="America/Santiago")  # fmt: skip
    santiago = dt.timezone(dt.timedelta(hours=-4))  # June: no daylight saving there
    old = graph.append(BOX, NEW, mail(1), received=dt.datetime(2026, 5, 31, 23, 0, tzinfo=santiago))
    new = graph.append(BOX, NEW, mail(2), received=dt.datetime(2026, 6, 1, 0, 0, tzinfo=santiago))
    result = await listener.run_once()
    assert (result.found, result.too_old, result.ingested) == (2, 1, 1)
    assert in_folder(graph, NEW) == [old] and in_folder(graph, DONE) == [new]
    assert (await listener.run_once()).too_old == 1  # still left, never read
    await request_date(store, "Graph", dt.date(2026, 5, 1), "America/Santiago",
                       dt.datetime.now(dt.UTC))  # fmt: skip
    result = await listener.run_once()
    assert (result.too_old, result.ingested) == (0, 1)
    assert all_moved(graph, db, [new, old])


async def test_rules_and_customer_from_reply_to_act_on_graph_mail(
    tmp_path: Path, graph: GraphServer, store: SqliteStore, db: Path
) -> None:
    """The case elements of an ImapListener work the same in a GraphListener: a Rule sets
    the inbox, CustomerFrom ReplyTo finds the customer by Reply-To."""
    rules = ('<Rules><Rule Name="Facturas"><Match Field="Subject" Contains="factura"/>'
             "<SetInbox>Facturacion</SetInbox></Rule></Rules>")  # fmt: skip
    listener = make(tmp_path, graph, store, inner=rules, CustomerFrom="ReplyTo")
    raw = (b"From: Portal <no-reply@portal.example>\r\n"
           b"Reply-To: Ana <ana@cliente.example>\r\nSubject: Su factura de marzo\r\n"
           b"Message-ID: <f1@graph.test>\r\n\r\nHola\r\n")  # fmt: skip
    graph.append(BOX, NEW, raw)
    graph.append(BOX, NEW, mail(7))
    await listener.run_once()
    rows = db_rows(db, "SELECT c.subject, c.inbox, a.address FROM cases c JOIN customer_addresses"
                   " a ON a.customer_id = c.customer_id ORDER BY c.id")  # fmt: skip
    assert rows == [("Su factura de marzo", "Facturacion", "ana@cliente.example"),
                    ("Question 7", None, "c7@example.test")]  # fmt: skip
