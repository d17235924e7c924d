"""Routing hooks (PA_SYS_MSG_IN), Python and SQL, against a real SQLite store."""

from __future__ import annotations

import itertools
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from engage_listener.cases import hooks_sql
from engage_listener.cases.hooks import (
    SQL_PARAMETERS,
    CustomerView,
    HookContext,
    RoutingDecision,
    RoutingHook,
    SqlHook,
    load_hook,
)
from engage_listener.errors import HookError
from engage_listener.store.sqlite.store import SqliteStore
from tests.support.hooks import case_row, context, insert_case, sql_file
from tests.support.paths import REPO

EXAMPLES = REPO / "examples" / "routing"
_module_numbers = itertools.count(1)


# ----- helpers ---------------------------------------------------------------------------
@pytest.fixture(autouse=True)
def _restore_sys_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """load_hook may append a config directory to sys.path; undo it after each test."""
    monkeypatch.setattr(sys, "path", list(sys.path))


@pytest.fixture
def python_hook(tmp_path: Path) -> Callable[[str], str]:
    """Write a hook module into tmp_path (the 'config directory'); returns its spec."""

    def write(source: str) -> str:
        name = f"hook_under_test_{next(_module_numbers)}"
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source), encoding="utf-8")
        return f"python:{name}:route"

    return write


async def run_in_tx(store: SqliteStore, hook: RoutingHook, ctx: HookContext) -> RoutingDecision:
    async with store.transaction() as tx:
        return await hook.run(ctx, tx)


# ----- Python hooks ----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            "return RoutingDecision(inbox='Ventas', priority=2, tags=('a',))",
            RoutingDecision("Ventas", 2, ("a",)),
        ),
        (
            "return {'inbox': ctx.case.subject, 'tags': ['x', 'y'], 'acknowledge': False}",
            RoutingDecision("Hola", None, ("x", "y"), False),
        ),
        ("return None", RoutingDecision()),
    ],
)
@pytest.mark.parametrize("kind", ["def", "async def"])
async def test_python_hook_results(
    python_hook: Callable[[str], str],
    tmp_path: Path,
    store: SqliteStore,
    kind: str,
    body: str,
    expected: RoutingDecision,
) -> None:
    spec = python_hook(f"""
        from engage_listener.cases.hooks import RoutingDecision
        {kind} route(ctx):
            {body}
    """)
    hook = load_hook(spec, tmp_path, 1.0)
    assert hook.name == spec
    assert await run_in_tx(store, hook, context()) == expected


async def test_python_hook_gets_the_context(
    python_hook: Callable[[str], str], tmp_path: Path, store: SqliteStore
) -> None:
    spec = python_hook("""
        def route(ctx):
            return {"inbox": f"{ctx.listener}|{ctx.customer.name}|{ctx.message.sender}"}
    """)
    ctx = context(customer=CustomerView(3, "Ana", ("ana@example.com",)))
    decision = await run_in_tx(store, load_hook(spec, tmp_path, 1.0), ctx)
    assert decision.inbox == "Default|Ana|ana@example.com"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("raise ValueError('sin bandeja')", "failed: ValueError: sin bandeja"),
        ("raise TimeoutError('its own')", "failed: TimeoutError: its own"),
        ("raise SystemExit(3)", "failed: SystemExit: 3"),
        ("return 42", "returned a bad decision: a int"),
        ("return {'queue': 'X'}", "unknown key(s) queue"),
        ("return {'priority': 'alta'}", "priority must be int or None"),
        ("return {'inbox': ''}", "inbox must be str or None"),
        ("return {'tags': 'urgente'}", "tags must be a list"),
    ],
)
async def test_python_hook_failures(
    python_hook: Callable[[str], str],
    tmp_path: Path,
    store: SqliteStore,
    body: str,
    message: str,
) -> None:
    spec = python_hook(f"""
        def route(ctx):
            {body}
    """)
    with pytest.raises(HookError, match=r"routing hook python:hook_under_test_\d+:route") as info:
        await run_in_tx(store, load_hook(spec, tmp_path, 1.0), context())
    assert message in str(info.value)


async def test_hook_exception_is_chained(
    python_hook: Callable[[str], str], tmp_path: Path, store: SqliteStore
) -> None:
    spec = python_hook("""
        async def route(ctx):
            raise KeyError("inbox")
    """)
    with pytest.raises(HookError) as info:
        await run_in_tx(store, load_hook(spec, tmp_path, 1.0), context())
    assert isinstance(info.value.__cause__, KeyError)


async def test_slow_sync_hook_times_out(
    python_hook: Callable[[str], str], tmp_path: Path, store: SqliteStore
) -> None:
    spec = python_hook("""
        import threading
        RELEASE = threading.Event()
        def route(ctx):
            RELEASE.wait(10)
    """)
    hook = load_hook(spec, tmp_path, 0.2)
    started = time.monotonic()
    try:
        with pytest.raises(HookError, match=r"timed out after 0\.2 s"):
            await run_in_tx(store, hook, context())
        assert time.monotonic() - started < 2
    finally:
        sys.modules[spec.split(":")[1]].RELEASE.set()  # free the worker thread


async def test_slow_async_hook_times_out(
    python_hook: Callable[[str], str], tmp_path: Path, store: SqliteStore
) -> None:
    spec = python_hook("""
        import asyncio
        async def route(ctx):
            await asyncio.sleep(30)
    """)
    started = time.monotonic()
    with pytest.raises(HookError, match=r"timed out after 0\.2 s"):
        await run_in_tx(store, load_hook(spec, tmp_path, 0.2), context())
    assert time.monotonic() - started < 2


async def test_example_python_hook(store: SqliteStore) -> None:
    hook = load_hook("python:by_keyword:route", EXAMPLES, 1.0)  # found via the config dir
    assert str(EXAMPLES) in sys.path
    cases = [
        (context(subject="Factura pendiente"), RoutingDecision("Facturacion")),
        (context(subject="RECLAMACIÓN por cobro"), RoutingDecision("Reclamos")),
        (
            context(subject="Consulta", text="Es URGENTE, no me llegó la factura"),
            RoutingDecision("Facturacion", 1, ("urgente",)),
        ),
        (context(subject="Hola"), RoutingDecision("General")),
        (context(subject="RE: Factura", is_new=False), RoutingDecision()),
        (
            context(subject="Respuesta automática: Factura", automatic="auto-submitted"),
            RoutingDecision("Facturacion", acknowledge=False),
        ),
    ]
    for ctx, expected in cases:
        assert await run_in_tx(store, hook, ctx) == expected, ctx.message.subject


# ----- loading ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("foo", "is malformed"),
        ("python:", "is malformed"),
        ("python:os", "is malformed"),
        ("python:os:bad-name", "is malformed"),
        ("sql:", "is malformed"),
        ("perl:route.pl", "is malformed"),
        ("python:nomodule:fn", "cannot import 'nomodule': ModuleNotFoundError"),
        ("python:os:nonexistent", "module 'os' has no 'nonexistent'"),
        ("python:os:sep", "os.sep is not callable"),
        ("sql:missing.sql", "cannot read"),
    ],
)
def test_load_errors(tmp_path: Path, spec: str, message: str) -> None:
    with pytest.raises(HookError) as info:
        load_hook(spec, tmp_path, 1.0)
    assert message in str(info.value)
    assert str(tmp_path) not in sys.path  # a failed import leaves sys.path as it was


def test_load_error_inside_the_hook_module(
    python_hook: Callable[[str], str], tmp_path: Path
) -> None:
    spec = python_hook("import missing_dependency_of_the_hook\ndef route(ctx): pass\n")
    with pytest.raises(HookError, match="No module named 'missing_dependency_of_the_hook'"):
        load_hook(spec, tmp_path, 1.0)
    spec = python_hook("def route(ctx) pass\n")
    with pytest.raises(HookError, match="SyntaxError"):
        load_hook(spec, tmp_path, 1.0)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "holds no SQL statement"),
        ("-- only a comment; really\n/* and ; another */\n", "holds no SQL statement"),
        ("UPDATE cases SET inbox = 'a;b\n", "line 1: unterminated quote or comment"),
        ("SELECT 1;\nSELEC 2;\n", 'statement 2 (line 2): near "SELEC": syntax error'),
        ("UPDATE cases SET inbox = 'X' WHERE id = :caseid;", "unknown parameter :caseid"),
        ("UPDATE cases SET inbox = ? WHERE id = 1;", "use named parameters"),
        ("BEGIN;\nUPDATE cases SET inbox = 'X';\nCOMMIT;", "statement 1 (line 1): BEGIN"),
        ("UPDATE cases SET inbox = 'X';\ncommit", "statement 2 (line 2): COMMIT"),
    ],
)
def test_sql_load_errors(tmp_path: Path, text: str, message: str) -> None:
    spec = sql_file(tmp_path, text)
    with pytest.raises(HookError) as info:
        load_hook(spec, tmp_path, 1.0)
    assert message in str(info.value)


def test_sql_file_not_utf8_and_bad_timeout(tmp_path: Path) -> None:
    (tmp_path / "latin1.sql").write_bytes("SELECT 'Facturación';".encode("latin-1"))
    with pytest.raises(HookError, match="not UTF-8"):
        load_hook("sql:latin1.sql", tmp_path, 1.0)
    with pytest.raises(HookError, match="timeout must be positive"):
        load_hook(sql_file(tmp_path, "SELECT 1;"), tmp_path, 0)


# ----- SQL hooks -------------------------------------------------------------------------
async def test_example_sql_routes_new_case(store: SqliteStore) -> None:
    hook = load_hook("sql:examples/routing/pa_sys_msg_in.sql", REPO, 5.0)
    factura = await insert_case(store, "Factura pendiente")
    queja = await insert_case(store, "Queja por la factura, URGENTE")
    otro = await insert_case(store, "Consulta")
    reply = await insert_case(store, "RE: Factura")
    assert await run_in_tx(store, hook, context(factura, "Factura pendiente")) == RoutingDecision()
    await run_in_tx(store, hook, context(queja, "Queja por la factura, URGENTE"))
    await run_in_tx(store, hook, context(otro, "Consulta"))
    await run_in_tx(store, hook, context(reply, "RE: Factura", is_new=False))
    assert await case_row(store, factura) == ("Facturacion", None)
    assert await case_row(store, queja) == ("Reclamos", 1)
    assert await case_row(store, otro) == ("General", None)
    assert await case_row(store, reply) == (None, None)  # joined an open case: left alone


async def test_example_sql_rolls_back_with_the_mail(store: SqliteStore) -> None:
    hook = load_hook("sql:examples/routing/pa_sys_msg_in.sql", REPO, 5.0)
    case_id = await insert_case(store, "Factura pendiente")
    with pytest.raises(RuntimeError, match="crash after routing"):
        async with store.transaction() as tx:
            await hook.run(context(case_id, "Factura pendiente"), tx)
            rows = await (
                await tx.execute("SELECT inbox FROM cases WHERE id = ?", (case_id,))
            ).fetchall()
            assert [tuple(r) for r in rows] == [("Facturacion",)]
            raise RuntimeError("crash after routing")
    assert await case_row(store, case_id) == (None, None)
    tables = await store.query("SELECT name FROM sqlite_master WHERE name = 'routing_rules'")
    assert tables == []  # even its CREATE TABLE rolled back


async def test_sql_parameters_and_splitting(tmp_path: Path, store: SqliteStore) -> None:
    """';' in quotes, comments and triggers does not split; two statements on one line do."""
    spec = sql_file(
        tmp_path,
        """
        /* set-up; not a statement */
        CREATE TABLE IF NOT EXISTS seen (k TEXT, v); -- comment; with a semicolon
        CREATE TABLE IF NOT EXISTS log (note TEXT); INSERT INTO log VALUES ('a;b');
        CREATE TRIGGER IF NOT EXISTS seen_log AFTER INSERT ON seen BEGIN
            INSERT INTO log VALUES ('trigger; ' || new.k);
        END;
        ;;
        INSERT INTO seen VALUES ('case_id', :case_id), ('case_number', :case_number),
            ('message_id', :message_id), ('customer_id', :customer_id),
            ('sender', :sender), ('sender_name', @sender_name), ('subject', $subject),
            ('text', :text), ('is_new_case', :is_new_case), ('listener', :listener),
            ('process', :process), ('colon in text', ':not_a_parameter')
    """,
    )
    hook = load_hook(spec, tmp_path, 5.0)
    ctx = context(4, "Factura", "cuerpo", customer=CustomerView(9, "Ana", ()))
    assert await run_in_tx(store, hook, ctx) == RoutingDecision()
    seen = dict(await store.query("SELECT k, v FROM seen"))
    assert seen == {
        "case_id": 4,
        "case_number": "C-000004",
        "message_id": 7,
        "customer_id": 9,
        "sender": "ana@example.com",
        "sender_name": "Ana Pérez",
        "subject": "Factura",
        "text": "cuerpo",
        "is_new_case": 1,
        "listener": "Default",
        "process": "EIS",
        "colon in text": ":not_a_parameter",
    }
    assert set(seen) - {"colon in text"} == set(SQL_PARAMETERS[:11])  # the rest: test_hook_view
    notes = [r[0] for r in await store.query("SELECT note FROM log")]
    assert notes[0] == "a;b" and "trigger; case_id" in notes and len(notes) == 13


async def test_sql_passes_only_the_names_used(tmp_path: Path, store: SqliteStore) -> None:
    class Recorder:
        """The real transaction, noting the parameters each statement got."""

        def __init__(self, tx: Any) -> None:
            self.tx, self.params = tx, list[Any]()

        def interrupt(self) -> None:
            self.tx.interrupt()

        def _noting(self, work: Any) -> Any:
            def noted(execute: Any) -> Any:
                def execute_noting(sql: str, params: Any = ()) -> Any:
                    self.params.append(params)
                    return execute(sql, params)

                return work(execute_noting)

            return noted

        async def run_sync(self, work: Any) -> Any:
            return await self.tx.run_sync(self._noting(work))

        def run_inline(self, work: Any, deadline: float) -> Any:
            return self.tx.run_inline(self._noting(work), deadline)

        def awaiting(self, deadline: float) -> Any:
            return None  # SQLite's: inline or on its thread

    spec = sql_file(tmp_path, "SELECT 1;\nSELECT :case_id, :subject, :case_id;\n")
    hook = load_hook(spec, tmp_path, 5.0)
    async with store.transaction() as tx:
        recorder = Recorder(tx)
        await hook.run(context(5, "Hola"), recorder)
    assert recorder.params == [{}, {"case_id": 5, "subject": "Hola"}]


async def test_sql_computes_only_the_parameters_it_names(
    tmp_path: Path, store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The headers' and attachments' JSON (the dearest) are made only for a hook that
    names them: a parameter nobody names is never computed."""
    computed: list[str] = []
    real = dict(hooks_sql._VALUES)
    for name, make in real.items():
        monkeypatch.setitem(
            hooks_sql._VALUES, name, lambda c, n=name, m=make: computed.append(n) or m(c)
        )
    quiet = load_hook(sql_file(tmp_path, "SELECT :subject AS inbox;\n", "a.sql"), tmp_path, 5.0)
    full = load_hook(sql_file(tmp_path, "SELECT :headers, :attachments;\n", "b.sql"), tmp_path, 5.0)
    async with store.transaction() as tx:
        assert await quiet.run(context(5, "Hola"), tx) == RoutingDecision("Hola")
        assert computed == ["subject"]
        await full.run(context(5, "Hola"), tx)
    assert sorted(computed[1:]) == ["attachments", "headers"]


@pytest.mark.parametrize(
    ("last", "expected"),
    [
        (
            "SELECT 'VIP' AS inbox, 2 AS Priority, 'oro, vip' AS tags, 0 AS acknowledge",
            RoutingDecision("VIP", 2, ("oro", "vip"), False),
        ),
        ("SELECT 'VIP' AS inbox WHERE :customer_id = 1", RoutingDecision()),  # no row
        ("SELECT 1 AS whatever", RoutingDecision()),
        ("UPDATE cases SET inbox = 'X' WHERE id = :case_id RETURNING inbox", RoutingDecision("X")),
    ],
)
async def test_sql_last_statement_decides(
    tmp_path: Path, store: SqliteStore, last: str, expected: RoutingDecision
) -> None:
    case_id = await insert_case(store, "Hola")
    spec = sql_file(tmp_path, f"SELECT 'ignored' AS inbox;\n{last}\n")
    assert await run_in_tx(store, load_hook(spec, tmp_path, 5.0), context(case_id)) == expected


async def test_sql_bad_decision_and_runtime_error(tmp_path: Path, store: SqliteStore) -> None:
    bad = load_hook(sql_file(tmp_path, "SELECT 'alta' AS priority;"), tmp_path, 5.0)
    with pytest.raises(HookError, match=r"statement 1 .* priority must be int or None"):
        await run_in_tx(store, bad, context())
    spec = sql_file(tmp_path, "SELECT 1;\n\nUPDATE nowhere SET x = 1;", "broken.sql")
    with pytest.raises(HookError, match=r"statement 2 \(line 3\) failed: no such table: nowhere"):
        await run_in_tx(store, load_hook(spec, tmp_path, 5.0), context())


@pytest.mark.parametrize("inline", [True, False], ids=["on the event loop", "on the thread"])
async def test_sql_timeout_interrupts_the_statement(
    tmp_path: Path, store: SqliteStore, inline: bool
) -> None:
    case_id = await insert_case(store, "Hola")
    spec = sql_file(
        tmp_path,
        """
        UPDATE cases SET inbox = 'Antes' WHERE id = :case_id;
        WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1000000000)
        SELECT count(*) FROM n;
    """,
    )
    hook = load_hook(spec, tmp_path, 0.2)
    assert isinstance(hook, SqlHook)
    hook.inline = inline
    started = time.monotonic()
    with pytest.raises(HookError, match=r"timed out after 0\.2 s .*interrupted"):
        await run_in_tx(store, hook, context(case_id))
    assert time.monotonic() - started < 5  # counting to 10**9 would take minutes
    assert await case_row(store, case_id) == (None, None)  # rolled back
    assert await insert_case(store, "the store still works") > case_id
