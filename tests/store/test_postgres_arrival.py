"""The arrival's one statement (store.postgres.arrival) on a real PostgreSQL."""

from __future__ import annotations

import json
from typing import Any

import psycopg

from engage_listener.store.interface import Store
from engage_listener.store.postgres.arrival import _ARRIVAL
from tests.support.postgres import pg_store, pg_url, postgres_server

__all__ = ["pg_store", "pg_url", "postgres_server"]  # fixtures


def _relations(plan: dict[str, Any]) -> list[str]:
    found = [plan["Relation Name"]] if "Relation Name" in plan else []
    for child in plan.get("Plans", ()):
        found += _relations(child)
    return found


async def test_the_duplicate_look_up_runs_once(pg_store: Store, pg_url: str) -> None:
    """The planner copied it into each use of its result: three look-ups of the ledger a
    mail (with a generic plan on a young table, each through every row of the listener)."""
    params = (True, "L", "0" * 64, "<m@x>", "ana@example.com", None, "hola", None, "hola")
    async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as conn:
        cur = await conn.execute(f"EXPLAIN (FORMAT JSON) {_ARRIVAL}", params)
        row = await cur.fetchone()
    assert row is not None
    plan = row[0] if isinstance(row[0], list) else json.loads(row[0])
    assert _relations(plan[0]["Plan"]).count("ledger") == 1
