"""Routing in the database (issue 16 point 6): `pg:SCHEMA.NAME` functions and procedures,
and `sql:` files in PostgreSQL's dialect, in the mail's transaction of a PostgreSQL store."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from devkit.postgres import PostgresServer
from engage_listener.cases.engine import CaseEngine, EngineSettings
from engage_listener.cases.hooks import RoutingDecision, load_hook
from engage_listener.config.model import StoreConfig
from engage_listener.errors import HookError
from engage_listener.store.interface import MailKey, Store
from engage_listener.store.open import build_store
from engage_listener.store.postgres import hooks as pg_hooks
from tests.support.helpers import make_mail
from tests.support.paths import REPO
from tests.support.postgres import fresh_database, postgres_server

__all__ = ["postgres_server"]  # a fixture
EXAMPLE = REPO / "examples" / "routing" / "pa_sys_msg_in.pgsql"


@pytest.fixture
async def url(postgres_server: PostgresServer) -> str:
    return fresh_database(postgres_server)


@pytest.fixture
async def store(url: str) -> AsyncIterator[Store]:
    opened = build_store(StoreConfig(Path("unused"), url=url))
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()


async def _install(url: str, sql: str) -> None:
    """As the application's role (the database's owner), as the example's comment says."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute(sql.encode())


async def _route(store: Store, hook: Any, *mails: bytes) -> list[Any]:
    engine = CaseEngine(store, EngineSettings("L", extract_attachments=True, hook=hook))
    infos = []
    for n, raw in enumerate(mails, start=1):
        done = await engine.ingest(MailKey("L", "INBOX", "1", str(n)), raw)
        assert done.case_id is not None
        async with store.transaction() as tx:
            infos.append(await tx.case_info(done.case_id))
    return infos


async def test_the_example_function_routes_new_cases(url: str, store: Store) -> None:
    await _install(url, EXAMPLE.read_text())
    await _install(url, EXAMPLE.read_text())  # installing it again keeps the rules
    hook = load_hook("pg:engage_routing.pa_sys_msg_in", REPO, 10, "postgres")
    claim, urgent = await _route(
        store,
        hook,
        make_mail(1, sender="ana@example.com", subject="Reclamo por factura duplicada"),
        make_mail(2, sender="bob@example.com", subject="URGENTE: pago pendiente"),
    )
    assert (claim.inbox, claim.priority, claim.tags) == ("Reclamos", None, ())
    assert (urgent.inbox, urgent.priority, urgent.tags) == ("Facturacion", 1, ("urgente",))


async def test_a_procedure_decides_through_its_out_arguments(url: str, store: Store) -> None:
    await _install(
        url,
        "CREATE SCHEMA crm; CREATE PROCEDURE crm.route(case_id bigint, is_new_case boolean,"
        " subject text, OUT inbox text, OUT tags text[], extra integer DEFAULT 7)"
        " LANGUAGE plpgsql AS $$ BEGIN inbox := 'P-' || case_id || '-' || is_new_case;"
        " tags := ARRAY['x', 'y']; END $$;",
    )
    [info] = await _route(store, load_hook("pg:CRM.Route", REPO, 10, "postgres"), make_mail(1))
    assert (info.inbox, info.tags) == (f"P-{info.id}-true", ("x", "y"))


async def test_a_sql_file_in_postgresql_dialect(url: str, store: Store, tmp_path: Path) -> None:
    (tmp_path / "route.sql").write_text(
        "-- casts, ON CONFLICT, jsonb's ? operator, and % in a pattern\n"
        "CREATE TABLE IF NOT EXISTS seen (case_id bigint PRIMARY KEY, subject text);\n"
        "INSERT INTO seen VALUES (:case_id, :subject::text) ON CONFLICT (case_id) DO NOTHING;\n"
        "SELECT 'Pg-' || count(*) AS inbox, 'a,b' AS tags, 2 AS priority FROM seen\n"
        " WHERE subject LIKE '%' || :subject || '%' AND '{\"x\": 1}'::jsonb ? 'x'\n"
        "   AND ARRAY[:listener] = ARRAY['L'];\n"
    )
    hook = load_hook("sql:route.sql", tmp_path, 10, "postgres")
    [info] = await _route(store, hook, make_mail(1, subject="Hola"))
    assert (info.inbox, info.priority, info.tags) == ("Pg-1", 2, ("a", "b"))


async def test_a_missing_routine_fails_the_mail_and_rolls_it_back(store: Store) -> None:
    hook = load_hook("pg:crm.nothing", REPO, 5, "postgres")
    engine = CaseEngine(store, EngineSettings("L", extract_attachments=True, hook=hook))
    with pytest.raises(HookError, match=r"no function or procedure crm\.nothing"):
        await engine.ingest(MailKey("L", "INBOX", "1", "1"), make_mail(1))
    assert await store.list_cases() == []


def test_pg_hooks_need_a_postgresql_store() -> None:
    with pytest.raises(HookError, match="need a PostgreSQL store"):
        load_hook("pg:crm.route", REPO, 5, "sqlite")
    with pytest.raises(HookError, match=r"pg:SCHEMA\.NAME"):
        load_hook("pg:route", REPO, 5, "postgres")


async def test_a_slow_sql_hook_is_cancelled_at_its_timeout(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Awaited, never a blocking wait on the event loop (a lock wait or a slow procedure
    holds up this mail only), cancelled on the server at RoutingTimeout; nothing of the
    mail is committed."""

    def blocking(*args: Any) -> Any:
        raise AssertionError("a PostgreSQL hook waited on the event loop")

    monkeypatch.setattr(pg_hooks, "_blocking_wait", blocking)
    (tmp_path / "slow.sql").write_text("SELECT pg_sleep(30), 'X' AS inbox WHERE :case_id > 0;\n")
    hook = load_hook("sql:slow.sql", tmp_path, 1.5, "postgres")
    engine = CaseEngine(store, EngineSettings("L", extract_attachments=True, hook=hook))
    with pytest.raises(HookError, match=r"timed out after 1\.5 s"):
        await engine.ingest(MailKey("L", "INBOX", "1", "1"), make_mail(1))
    assert await store.list_cases() == []
    assert await store.known_states("L", "INBOX", "1", ["1"]) == {}


class _Discarding:
    """A Python hook that discards every mail."""

    name = "discarding"

    async def run(self, ctx: Any, sql: Any) -> RoutingDecision:
        return RoutingDecision(discard=True)


async def test_a_mail_discarded_by_routing_leaves_its_new_customer(store: Store) -> None:
    """The case it opened is undone, the mail kept ignored; the sender's customer, made
    apart and committed at once (store.postgres.customers), stays, with no case, and the
    sender's next mail finds it (on SQLite it is undone with the mail)."""
    engine = CaseEngine(store, EngineSettings("L", extract_attachments=True, hook=_Discarding()))
    raw = make_mail(1, sender="x@spam.example")
    done = await engine.ingest(MailKey("L", "INBOX", "1", "1"), raw)
    assert done.ignored and done.case_id is None
    async with store.transaction() as tx:
        kept = await tx.find_customer("x@spam.example")
        cases = await tx._all("SELECT count(*) FROM cases")  # type: ignore[attr-defined]
    assert kept is not None and kept.addresses == ("x@spam.example",) and cases == [(0,)]
