"""SQL hooks run on the event loop while they are quick, on the store's thread once slow."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from engage_listener.cases import hooks_sql
from engage_listener.cases.hooks import RoutingDecision, SqlHook, load_hook
from engage_listener.cases.hooks_sql import INLINE_SECONDS
from engage_listener.errors import StoreError
from engage_listener.store.sqlite.store import SqliteStore
from tests.support.hooks import case_row, context, insert_case, sql_file

# Counting in a recursive CTE: about 0.1 s per million rows, whatever the machine's load
# adds; well past INLINE_SECONDS, far below the timeout.
SLOW = """
    WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 2000000)
    SELECT count(*) FROM n;
"""


class Where:
    """The real transaction, noting where each run went."""

    def __init__(self, tx: Any) -> None:
        self.tx, self.runs = tx, list[str]()

    def interrupt(self) -> None:
        self.tx.interrupt()

    async def run_sync(self, work: Any) -> Any:
        self.runs.append("thread")
        return await self.tx.run_sync(work)

    def run_inline(self, work: Any, stop_at: float) -> Any:
        self.runs.append("inline")
        return self.tx.run_inline(work, stop_at)

    def awaiting(self, stop_at: float) -> Any:
        return self.tx.awaiting(stop_at)  # SQLite's: None


async def run_noted(
    store: SqliteStore, hook: SqlHook, case_id: int, runs: list[str] | None = None
) -> tuple[str, RoutingDecision]:
    async with store.transaction() as tx:
        where = Where(tx)
        where.runs = runs if runs is not None else where.runs
        decision = await hook.run(context(case_id, "Factura urgente"), where)
    return where.runs[0], decision


def load(tmp_path: Path, text: str, timeout: float = 10.0) -> SqlHook:
    hook = load_hook(sql_file(tmp_path, text), tmp_path, timeout)
    assert isinstance(hook, SqlHook)
    return hook


async def test_quick_hook_stays_inline_and_commits(
    tmp_path: Path, store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hooks_sql, "INLINE_SECONDS", 5.0)  # a stalled CI machine is no reason
    case_id = await insert_case(store, "Factura urgente")
    hook = load(
        tmp_path,
        """
        UPDATE cases SET priority = coalesce(priority, 0) + 1 WHERE id = :case_id;
        SELECT 'Ventas' AS inbox;
    """,
    )
    for _ in range(3):
        assert await run_noted(store, hook, case_id) == ("inline", RoutingDecision("Ventas"))
    assert hook.inline
    assert await case_row(store, case_id) == (None, 3)  # every inline run's write committed


async def test_slow_hook_moves_to_the_thread(tmp_path: Path, store: SqliteStore) -> None:
    case_id = await insert_case(store, "Hola")
    hook = load(tmp_path, "UPDATE cases SET inbox = 'Lento' WHERE id = :case_id;\n" + SLOW)
    with capture_logs() as logs:
        assert (await run_noted(store, hook, case_id))[0] == "inline"
    assert not hook.inline
    slow = [e for e in logs if e["event"] == "routing_hook_slow"]
    assert len(slow) == 1 and slow[0]["hook"] == hook.name
    assert slow[0]["seconds"] > INLINE_SECONDS and slow[0]["log_level"] == "warning"
    assert await case_row(store, case_id) == ("Lento", None)  # the slow run still counted
    with capture_logs() as logs:
        assert (await run_noted(store, hook, case_id))[0] == "thread"
    assert not logs  # said once
    # a reload loads the hook anew: inline again
    assert load(tmp_path, "SELECT 1;").inline


async def test_a_run_past_the_limit_is_stopped_undone_and_done_on_the_thread(
    tmp_path: Path, store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The event loop is held at most INLINE_LIMIT: a longer run (here a slow SELECT after
    a write) is stopped, its write undone, and the whole procedure run on the thread."""
    monkeypatch.setattr(hooks_sql, "INLINE_LIMIT", 0.02)
    case_id = await insert_case(store, "Hola")
    slow_decision = SLOW.replace("SELECT count(*)", "SELECT 'Lento' AS inbox, count(*)")
    hook = load(
        tmp_path,
        "UPDATE cases SET priority = coalesce(priority, 0) + 1"
        " WHERE id = :case_id;\n" + slow_decision,
    )
    runs: list[str] = []
    with capture_logs() as logs:
        assert await run_noted(store, hook, case_id, runs) == ("inline", RoutingDecision("Lento"))
    assert runs == ["inline", "thread"] and not hook.inline
    assert [e["event"] for e in logs] == ["routing_hook_slow"]
    assert await case_row(store, case_id) == (None, 1)  # the stopped run's write was undone


async def test_a_write_stopped_inline_retries_the_mail(
    tmp_path: Path, store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stopping a write makes SQLite roll back the mail's whole transaction: that is a
    store error (the mail is tried again, no attempt counted), then it runs on the thread."""
    monkeypatch.setattr(hooks_sql, "INLINE_LIMIT", 0.02)
    case_id = await insert_case(store, "Hola")
    hook = load(
        tmp_path,
        f"""
        UPDATE cases SET inbox = 'Lento' || (
            {SLOW.strip().rstrip(";").replace("SELECT count(*)", "SELECT substr(count(*), 1, 0)")}
        ) WHERE id = :case_id;
    """,
    )
    with pytest.raises(StoreError, match="stopped inline"):
        await run_noted(store, hook, case_id)
    assert not hook.inline
    assert await case_row(store, case_id) == (None, None)
    assert await run_noted(store, hook, case_id) == ("thread", RoutingDecision())
    assert await case_row(store, case_id) == ("Lento", None)


async def test_inline_progress_check_is_removed(tmp_path: Path, store: SqliteStore) -> None:
    """The deadline check of an inline run must not outlive it: a later long statement
    (an operator command, the next mail) runs unhindered."""
    case_id = await insert_case(store, "Hola")
    hook = load(tmp_path, "SELECT 1;", timeout=1)
    await run_noted(store, hook, case_id)
    await asyncio.sleep(1.1)  # past that run's deadline
    rows = await store.query(SLOW.strip().rstrip(";"))
    assert rows[0][0] == 2000000
