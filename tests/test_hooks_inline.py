"""SQL hooks run on the event loop while they are quick, on the store's thread once slow."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from structlog.testing import capture_logs

from engage_listener.hooks import RoutingDecision, SqlHook, load_hook
from engage_listener.hooks_sql import INLINE_MAX_TIMEOUT, INLINE_SECONDS
from engage_listener.sqlite_store import SqliteStore

from .test_hooks import case_row, context, insert_case, sql_file

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

    def run_inline(self, work: Any, deadline: float) -> Any:
        self.runs.append("inline")
        return self.tx.run_inline(work, deadline)


async def run_noted(store: SqliteStore, hook: SqlHook, case_id: int) -> tuple[str, RoutingDecision]:
    async with store.transaction() as tx:
        where = Where(tx)
        decision = await hook.run(context(case_id, "Factura urgente"), where)
    return where.runs[0], decision


def load(tmp_path: Path, text: str, timeout: float = 10.0) -> SqlHook:
    hook = load_hook(sql_file(tmp_path, text), tmp_path, timeout)
    assert isinstance(hook, SqlHook)
    return hook


async def test_quick_hook_stays_inline_and_commits(tmp_path: Path, store: SqliteStore) -> None:
    case_id = await insert_case(store, "Factura urgente")
    hook = load(tmp_path, """
        UPDATE cases SET priority = coalesce(priority, 0) + 1 WHERE id = :case_id;
        SELECT 'Ventas' AS inbox;
    """)
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


async def test_long_timeout_never_runs_inline(tmp_path: Path, store: SqliteStore) -> None:
    """A hook allowed more than INLINE_MAX_TIMEOUT could hold the event loop (heartbeats,
    the watchdog, other listeners) that long: it runs on the thread from the start."""
    case_id = await insert_case(store, "Hola")
    hook = load(tmp_path, "SELECT 'X' AS inbox;", timeout=INLINE_MAX_TIMEOUT + 1)
    assert await run_noted(store, hook, case_id) == ("thread", RoutingDecision("X"))
    assert not load(tmp_path, "SELECT 1;", timeout=INLINE_MAX_TIMEOUT + 1).inline
    assert load(tmp_path, "SELECT 1;", timeout=INLINE_MAX_TIMEOUT).inline


async def test_inline_progress_check_is_removed(tmp_path: Path, store: SqliteStore) -> None:
    """The deadline check of an inline run must not outlive it: a later long statement
    (an operator command, the next mail) runs unhindered."""
    case_id = await insert_case(store, "Hola")
    hook = load(tmp_path, "SELECT 1;", timeout=1)
    await run_noted(store, hook, case_id)
    await asyncio.sleep(1.1)  # past that run's deadline
    rows = await store.query(SLOW.strip().rstrip(";"))
    assert rows[0][0] == 2000000
