"""Which case events a mail queues for the CRM, in its own transaction."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engage_listener.cases.hooks import load_hook
from engage_listener.errors import EngageError
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
