"""Issue 18 point 4: what routing hooks see (Python fields, SQL parameters) and the new
decision fields (process, status, discard, quarantine), through the engine."""

from __future__ import annotations

import json
from email.message import EmailMessage
from pathlib import Path

import pytest

from engage_listener.cases.hook_types import (
    AttachmentView,
    RoutingDecision,
    as_decision,
)
from engage_listener.cases.hooks import SQL_PARAMETERS, HookContext, SqlExecutor, load_hook
from engage_listener.cases.routing import combine
from engage_listener.cases.rules import Headers, RuleOutcome
from engage_listener.errors import HookError, QuarantineNow
from engage_listener.mail.parser import Address
from engage_listener.store.sqlite.store import SqliteStore
from tests.support.engine import engine, key
from tests.support.helpers import db_rows
from tests.support.hooks import context, sql_file


def full_context() -> HookContext:
    base = context(4, "Factura", "cuerpo")
    message = base.message.__class__(
        *(getattr(base.message, f) for f in ("row", "message_id", "sender", "sender_name")),
        "Factura",
        "Nuevo\n\n> viejo",
        ("factura.pdf",),
        None,
        to=(Address("Facturacion@Example.org", "Fact"),),
        cc=(Address("jefe@example.com", ""),),
        reply_to=(Address("ana@casa.example", "Ana"),),
        delivered_to="facturacion@example.org",
        headers=Headers({"X-Spam-Flag": "NO", "Subject": "Factura"}),
        new_text="Nuevo",
        attachments=(AttachmentView("factura.pdf", "application/pdf", 1234),),
    )
    rules = RuleOutcome(matched=("Facturas",), inbox="Facturacion", priority=2, tags=("a", "b"))
    return HookContext(base.listener, base.case, message, base.customer, rules)


async def run_in_tx(store: SqliteStore, hook: object, ctx: HookContext) -> RoutingDecision:
    async with store.transaction() as tx:
        return await hook.run(ctx, tx)  # type: ignore[attr-defined, no-any-return]


NEW_PARAMETERS = SQL_PARAMETERS[11:]


async def test_sql_hooks_get_the_whole_mail_as_named_parameters(
    tmp_path: Path, store: SqliteStore
) -> None:
    names = ", ".join(f"('{n}', :{n})" for n in NEW_PARAMETERS)
    spec = sql_file(
        tmp_path,
        f"""
        CREATE TABLE IF NOT EXISTS seen (k TEXT, v);
        INSERT INTO seen VALUES {names};
        INSERT INTO seen VALUES ('spam', json_extract(:headers, '$."x-spam-flag"'));
        INSERT INTO seen SELECT 'pdf', json_extract(value, '$.size')
            FROM json_each(:attachments) WHERE json_extract(value, '$.type') = 'application/pdf';
        SELECT 'Otra' AS inbox, 'closed' AS status, 'Cobros' AS process;
        """,
    )
    hook = load_hook(spec, tmp_path, 5.0)
    decision = await run_in_tx(store, hook, full_context())
    assert decision == RoutingDecision(inbox="Otra", status="closed", process="Cobros")
    seen = dict(await store.query("SELECT k, v FROM seen"))
    assert seen["to_addresses"] == "facturacion@example.org"
    assert seen["cc_addresses"] == "jefe@example.com"
    assert seen["reply_to"] == "ana@casa.example"
    assert seen["delivered_to"] == "facturacion@example.org"
    assert seen["new_text"] == "Nuevo"
    assert json.loads(seen["headers"]) == {"x-spam-flag": "NO", "subject": "Factura"}
    assert seen["spam"] == "NO" and seen["pdf"] == 1234
    assert seen["automatic"] is None
    assert (seen["rules_matched"], seen["rules_inbox"]) == ("Facturas", "Facturacion")
    assert (seen["rules_priority"], seen["rules_tags"]) == (2, "a,b")
    assert set(seen) - {"spam", "pdf"} == set(NEW_PARAMETERS)


async def test_sql_decision_rows_may_discard_or_quarantine(
    tmp_path: Path, store: SqliteStore
) -> None:
    spec = sql_file(tmp_path, "SELECT 1 AS discard, NULL AS quarantine;")
    assert (await run_in_tx(store, load_hook(spec, tmp_path, 5.0), full_context())).discard
    spec = sql_file(tmp_path, "SELECT 'fraude' AS quarantine;", "q.sql")
    found = await run_in_tx(store, load_hook(spec, tmp_path, 5.0), full_context())
    assert found.quarantine == "fraude"
    spec = sql_file(tmp_path, "SELECT 'rejected' AS status;", "r.sql")
    with pytest.raises(HookError, match="status must be one of"):
        await run_in_tx(store, load_hook(spec, tmp_path, 5.0), full_context())


def test_decisions_are_checked() -> None:
    assert as_decision({"process": "Ventas", "status": "closed"}) == RoutingDecision(
        process="Ventas", status="closed"
    )
    assert as_decision({"discard": True, "quarantine": "x"}).discard
    for bad in ({"status": "borrado"}, {"discard": "yes"}, {"quarantine": ""}, {"process": 1}):
        with pytest.raises(TypeError):
            as_decision(bad)


def test_the_hook_overrides_the_rules_field_by_field() -> None:
    rules = RuleOutcome(
        matched=("R",), process="P", inbox="I", priority=2, tags=("a",), acknowledge=False
    )
    assert combine(rules, None) == RoutingDecision("I", 2, ("a",), False, process="P")
    hook = RoutingDecision(inbox="H", tags=("b", "a"), acknowledge=True, status="closed")
    assert combine(rules, hook) == RoutingDecision(
        "H", 2, ("a", "b"), True, process="P", status="closed"
    )


def mail(subject: str, sender: str = "ana@example.com") -> bytes:
    msg = EmailMessage()
    msg["From"] = f"Ana <{sender}>"
    msg["To"] = "soporte@example.org"
    msg["Subject"] = subject
    msg["Message-ID"] = f"<{subject.encode().hex()}@example.com>"
    msg.set_content("Hola\n")
    return msg.as_bytes()


class Deciding:
    """A Python hook whose decision is chosen by the mail's subject."""

    name = "deciding"

    async def run(self, ctx: HookContext, sql: SqlExecutor) -> RoutingDecision:
        return {
            "descartar": RoutingDecision(inbox="X", discard=True),
            "sospechoso": RoutingDecision(quarantine="fraude"),
            "mover": RoutingDecision(process="Cobros", status="closed", priority=1),
        }.get(ctx.message.subject, RoutingDecision())


async def test_a_hook_discards_quarantines_moves_and_closes(store: SqliteStore) -> None:
    e = engine(store, hook=Deciding())
    done = await e.ingest(key(), mail("descartar"))
    assert done.ignored and done.case_id is None
    # the case it opened was rolled back; the mail is kept, ignored, with its ledger row
    assert db_rows(store.path, "SELECT count(*) FROM cases") == [(0,)]
    assert db_rows(store.path, "SELECT subject, ignored, case_id FROM messages") == [
        ("descartar", 1, None)
    ]
    assert db_rows(store.path, "SELECT state FROM ledger") == [("committed",)]
    with pytest.raises(QuarantineNow, match="routing hook deciding: fraude"):
        await e.ingest(key(), mail("sospechoso"))
    moved = await e.ingest(key(), mail("mover"))
    assert db_rows(store.path, "SELECT process, status, priority FROM cases") == [
        ("Cobros", "closed", 1)
    ]
    assert moved.new_case
    async with store.transaction() as tx:
        info = await tx.case_info(moved.case_id or 0)
    assert (info.process, info.status, info.priority) == ("Cobros", "closed", 1)


async def test_approval_rejects_a_case_routing_discards(store: SqliteStore) -> None:
    e = engine(store, hook=Deciding(), require_approval=True)
    done = await e.ingest(key(), mail("descartar"))
    assert done.case_id is not None  # routing waits for the approval
    said = await e.approve(done.case_id)
    assert "rejected by routing" in said
    assert db_rows(store.path, "SELECT status FROM cases") == [("rejected",)]
