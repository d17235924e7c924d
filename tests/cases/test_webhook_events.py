"""Which case events a mail queues for the CRM, in its own transaction."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engage_listener.cases.hooks import load_hook
from engage_listener.config.webhook import WEBHOOK_EVENTS
from engage_listener.errors import EngageError
from engage_listener.ops import case_status
from engage_listener.store.sqlite.store import SqliteStore
from tests.support.engine import key
from tests.support.helpers import make_mail
from tests.support.hooks import sql_file
from tests.support.webhooks import engine


async def _events(store: SqliteStore) -> list[tuple[str, str, str]]:
    rows = await store.query("SELECT event, event_id, body FROM webhook_events ORDER BY id")
    return [(str(r[0]), str(r[1]), json.loads(r[2])["case"]["status"]) for r in rows]


async def test_routing_that_closes_the_case_queues_case_closed_after_the_mail(
    store: SqliteStore, tmp_path: Path
) -> None:
    spec = sql_file(tmp_path, "SELECT 'closed' AS status WHERE :subject LIKE 'RE:%';\n")
    eng = engine(store, hook=load_hook(spec, tmp_path, 5.0))
    await eng.ingest(key(), make_mail(1, subject="Consulta"))
    await eng.ingest(key(), make_mail(2, subject="RE: Consulta"))
    found = await _events(store)
    assert [(event, status) for event, _, status in found] == [
        ("case-opened", "open"),
        ("message-added", "closed"),
        ("case-closed", "closed"),
    ]
    assert len({event_id for _, event_id, _ in found}) == 3


async def test_a_mail_rolled_back_queues_nothing_and_events_not_wanted_are_not_queued(
    store: SqliteStore, tmp_path: Path
) -> None:
    spec = sql_file(tmp_path, "SELECT * FROM no_such_table;\n")
    with pytest.raises(EngageError):
        await engine(store, hook=load_hook(spec, tmp_path, 5.0)).ingest(key(), make_mail(1))
    assert await store.query("SELECT count(*) FROM cases") == [(0,)]
    assert await _events(store) == []
    only = engine(store, webhook_events=("message-added",))
    await only.ingest(key(), make_mail(2, subject="Hola"))
    await only.ingest(key(), make_mail(3, subject="RE: Hola"))
    assert [event for event, _, _ in await _events(store)] == ["message-added"]


async def test_a_case_awaiting_approval_is_opened_for_the_crm_when_approved(
    store: SqliteStore,
) -> None:
    eng = engine(store, require_approval=True)
    done = await eng.ingest(key(), make_mail(1))
    assert await _events(store) == []
    assert done.case_id is not None
    await eng.approve(done.case_id)
    assert [(e, s) for e, _, s in await _events(store)] == [("case-opened", "open")]


async def test_an_operators_close_and_reopen_queue_their_events(store: SqliteStore) -> None:
    done = await engine(store).ingest(key(), make_mail(1))
    assert done.case_id is not None
    wanted = {"L": WEBHOOK_EVENTS}
    await case_status.close_cases(store, [done.case_id], "resuelto por teléfono", wanted)
    await case_status.close_cases(store, [done.case_id], "otra vez", wanted)  # closed: nothing
    await case_status.reopen_cases(store, [done.case_id], wanted)
    await case_status.reopen_cases(store, [done.case_id], {"Other": WEBHOOK_EVENTS})
    rows = await store.query("SELECT event, body FROM webhook_events ORDER BY id")
    bodies = [(str(r[0]), json.loads(r[1])) for r in rows]
    assert [event for event, _ in bodies] == ["case-opened", "case-closed", "case-reopened"]
    closed = bodies[1][1]
    assert closed["message"] is None and closed["reason"] == "resuelto por teléfono"
    assert closed["case"]["status"] == "closed" and bodies[2][1]["case"]["status"] == "open"


async def test_a_mail_that_reopens_a_closed_case_queues_case_reopened_then_the_mail(
    store: SqliteStore,
) -> None:
    eng = engine(store)
    done = await eng.ingest(key(), make_mail(1, subject="Consulta"))
    assert done.case_id is not None
    await case_status.close_cases(store, [done.case_id], None)  # no Webhook: no event
    again = await eng.ingest(key(), make_mail(2, subject="RE: Consulta"))
    assert again.case_id == done.case_id
    found = [(event, status) for event, _, status in await _events(store)]
    assert found == [("case-opened", "open"), ("case-reopened", "open"), ("message-added", "open")]
