"""Operator commands on a Graph listener against the Graph imitation: test-connection's
steps, `search` (Graph's $filter and $search, the ledger for "in a case"), reset/resume."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest

from engage_listener.config.load import load_config
from engage_listener.config.model import Config
from engage_listener.config.secret_refs import generate_key
from engage_listener.errors import EngageError
from engage_listener.ops import commands
from engage_listener.ops.diagnose_graph import test_graph as graph_steps
from engage_listener.ops.diagnose_steps import Step
from engage_listener.ops.search import Criteria, render
from engage_listener.ops.search_graph import search_graph
from engage_listener.service.build_graph import graph_connect
from engage_listener.store.sqlite.store import SqliteStore
from tests.support.config_xml import WITH_GRAPH, ack_xml, graph_xml, write_config
from tests.support.graph import BOX, DONE, NEW, make
from tests.support.servers.graph_server import GraphServer
from tests.support.servers.oauth_server import OAuthTestServer
from tests.support.servers.smtp_server import SmtpTestServer


def config(tmp_path: Path, server: GraphServer, **extra: Any) -> Config:
    if not (tmp_path / "el.key").exists():
        generate_key(tmp_path / "el.key")
    xml = graph_xml(server.endpoint, server.ca_file, BOX, **extra)
    path = write_config(tmp_path / "el.xml", xml, process=WITH_GRAPH, key_file=tmp_path / "el.key")
    return load_config(path)


async def steps(cfg: Config, server: GraphServer, create: bool = False) -> list[Step]:
    (listener,) = cfg.graph_listeners

    async def token(force: bool) -> str:
        return server.issue_token()

    return await graph_steps(listener, token, graph_connect(listener, token), create_folders=create)


def by_name(found: list[Step]) -> dict[str, Step]:
    return {step.name: step for step in found}


async def test_everything_in_place(tmp_path: Path, graph: GraphServer) -> None:
    graph.create_folder(BOX, "Inbox/New")
    graph.create_folder(BOX, "Inbox/Done")
    found = by_name(await steps(config(tmp_path, graph), graph))
    assert all(step.ok for step in found.values())
    assert list(found) == ["token", "mailbox", "input folder", "output folder", "error folder",
                           "read"]  # fmt: skip
    assert "created when first needed" in found["error folder"].detail


async def test_missing_folders_then_created(tmp_path: Path, graph: GraphServer) -> None:
    cfg = config(tmp_path, graph)
    found = by_name(await steps(cfg, graph))
    assert not found["input folder"].ok and "--create-folders" in found["input folder"].hint
    created = by_name(await steps(cfg, graph, create=True))
    assert all(step.ok for step in created.values())
    assert graph.folder_id(BOX, "Inbox/Error")  # the error folder was made too


async def test_access_denied_says_what_to_grant(tmp_path: Path, graph: GraphServer) -> None:
    graph.allow(BOX, False)
    found = by_name(await steps(config(tmp_path, graph), graph))
    assert not found["mailbox"].ok
    assert "Mail.ReadWrite" in found["mailbox"].hint
    assert "access policy" in found["mailbox"].detail


async def test_reset_and_resume_accepted(tmp_path: Path, graph: GraphServer) -> None:
    cfg = config(tmp_path, graph)
    tomorrow = dt.datetime.now(dt.UTC).date() + dt.timedelta(days=2)
    assert (await commands.control_listener(cfg, "Graph", tomorrow)).action == "pause"
    assert (await commands.control_listener(cfg, "Graph", None)).action == "resume"
    assert (await commands.control_listener(cfg, "Graph", dt.date(2020, 1, 1))).action == "reset"


# ----- search ---------------------------------------------------------------------------
def letter(sender: str, subject: str, body: str = "Hola") -> bytes:
    head = f"From: {sender}\r\nSubject: {subject}\r\nMessage-ID: <{abs(hash(subject))}@t>"
    return f"{head}\r\n\r\n{body}\r\n".encode()


async def found(tmp_path: Path, graph: GraphServer, store: SqliteStore,
                **criteria: Any) -> list[tuple[str, bool]]:  # fmt: skip
    """`search` of the listener (TimeZone America/Santiago) as (subject, in a case)."""
    (listener,) = config(tmp_path, graph, TimeZone="America/Santiago").graph_listeners

    async def token(force: bool) -> str:
        return graph.issue_token()

    criteria.setdefault("folder", "Inbox/Done")
    async with graph_connect(listener, token)() as session:
        hits = await search_graph(session, listener, Criteria(**criteria), store=store)
    assert all(h.size is None and isinstance(h.uid, str) for h in hits)
    return [(h.subject, h.in_case) for h in hits]


@pytest.fixture
async def searched(tmp_path: Path, graph: GraphServer, store: SqliteStore) -> GraphServer:
    """One mail taken into a case (now in Inbox/Done), three put there by hand, one old."""
    listener = make(tmp_path / "taken", graph, store)
    graph.append(BOX, NEW, letter("Ana Pérez <ana@x.example>", "Factura de marzo"))
    await listener.run_once()
    santiago = dt.timezone(dt.timedelta(hours=-3))  # November: daylight saving time
    graph.append(BOX, DONE, letter("ana@x.example", "Otra factura"),
                 received=dt.datetime(2026, 11, 20, 0, 30, tzinfo=santiago))  # fmt: skip
    graph.append(BOX, DONE, letter("Luis <luis@y.example>", "Envío atrasado"),
                 received=dt.datetime(2026, 11, 19, 23, 30, tzinfo=santiago))  # fmt: skip
    graph.append(BOX, DONE, letter("luis@y.example", "Consulta", body="mi factura no llegó"),
                 received=dt.datetime(2026, 11, 21, 10, 0, tzinfo=santiago))  # fmt: skip
    return graph


async def test_search_by_sender_and_subject_words_says_which_are_in_a_case(
    tmp_path: Path, searched: GraphServer, store: SqliteStore
) -> None:
    """As IMAP's search: oldest first, the one taken into a case marked so (the ledger's
    immutable id, though it was found in the output folder). Graph's KQL matches words
    and their beginnings: `fact` finds Factura, `tura` does not."""
    by_ana = await found(tmp_path, searched, store, sender="ana@x.example")
    assert by_ana == [("Otra factura", False), ("Factura de marzo", True)]
    assert await found(tmp_path, searched, store, subject="fact") == by_ana
    assert await found(tmp_path, searched, store, subject="tura") == []
    both = await found(tmp_path, searched, store, sender="luis", subject="envío")
    assert both == [("Envío atrasado", False)]
    searches = [r for r in searched.requests("$search") if r.status == 200]
    assert searches and all("$orderby" not in r.path and "$filter" not in r.path
                            for r in searches)  # fmt: skip


async def test_search_dates_are_days_in_the_listeners_time_zone(
    tmp_path: Path, searched: GraphServer, store: SqliteStore
) -> None:
    """Since 2026-11-20 in Santiago: 00:30 there is in, 23:30 the day before is out, with
    dates alone ($filter, newest first, $top) or with a sender ($search, checked here)."""
    day, next_day = dt.date(2026, 11, 20), dt.date(2026, 11, 21)
    only = await found(tmp_path, searched, store, since=day, before=next_day)
    assert only == [("Otra factura", False)]
    assert await found(tmp_path, searched, store, sender="luis", since=day) == [
        ("Consulta", False)]  # fmt: skip
    assert await found(tmp_path, searched, store, before=day) == [("Envío atrasado", False)]
    filtered = [r for r in searched.requests("$filter") if r.status == 200]
    assert filtered and all("receivedDateTime" in r.path for r in filtered)


async def test_search_limit_keeps_the_newest_in_any_folder(
    tmp_path: Path, searched: GraphServer, store: SqliteStore
) -> None:
    newest = await found(tmp_path, searched, store, limit=2)
    assert newest == [("Consulta", False), ("Factura de marzo", True)]
    searched.append(BOX, NEW, letter("eva@z.example", "Pendiente"))
    assert await found(tmp_path, searched, store, folder="Inbox/New") == [("Pendiente", False)]


def app_only(tmp_path: Path, graph: GraphServer, idp: OAuthTestServer, **extra: str) -> Config:
    """The configuration as the daemon reads it: app-only sign-in at the identity-provider
    imitation, which the Graph imitation trusts."""
    graph.idp = idp
    idp.add_ms_app("tenant-a", "app-graph", secret="graph-app-secret", mailbox=BOX)
    auth = {"Type": "Microsoft", "TenantId": "tenant-a", "ClientId": "app-graph",
            "ClientSecret": "plain:graph-app-secret", "Authority": idp.authority,
            "CaFile": str(idp.ca_file)}  # fmt: skip
    return config(tmp_path, graph, auth=auth, **extra)


async def test_test_connection_checks_the_acknowledgement_smtp_account_too(
    tmp_path: Path, graph: GraphServer, smtp: SmtpTestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As for IMAP: after Graph's steps, the Acknowledgement's SMTP account (dns, tcp, tls,
    login) and, with --send-to, one test message; no secret in any step."""
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path / "state"))
    graph.create_folder(BOX, NEW)
    graph.create_folder(BOX, DONE)
    account = {"UserName": smtp.USER, "Password": smtp.PASSWORD, "CaFile": str(smtp.ca_file)}
    ack = ack_xml(smtp.port, security="StartTls", from_address="soporte@example.org",
                  smtp=account)  # fmt: skip
    with OAuthTestServer(tmp_path / "idp") as idp:
        cfg = app_only(tmp_path, graph, idp, inner=ack)
        found = await commands.test_connections(cfg, ["Graph"], create_folders=False,
                                                send_to="operador@example.net")  # fmt: skip
    assert all(step.ok for step in found), found
    assert [s.name for s in found if s.account == "smtp"] == ["dns", "tcp", "tls", "login",
                                                              "send"]  # fmt: skip
    [received] = smtp.messages
    assert received.rcpt_tos == ["operador@example.net"]
    assert smtp.PASSWORD not in str(found) and "graph-app-secret" not in str(found)


async def test_search_command_signs_in_and_prints(
    tmp_path: Path, graph: GraphServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The command's own path: app-only sign-in at the identity-provider imitation, the
    listener's input folder by default; a folder that does not exist is a clear error."""
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path / "state"))
    with OAuthTestServer(tmp_path / "idp") as idp:
        cfg = app_only(tmp_path, graph, idp)
        graph.create_folder(BOX, NEW)
        graph.append(BOX, NEW, letter("ana@x.example", "Factura\x1b[31m roja"))
        hits = await commands.search(cfg, "Graph", Criteria(NEW, sender="ana"))
        with pytest.raises(EngageError, match="'Nope' does not exist"):
            await commands.search(cfg, "Graph", Criteria("Nope"))
    assert [(h.subject, h.in_case) for h in hits] == [("Factura\x1b[31m roja", False)]
    text = render(hits)
    assert "\x1b" not in text and "ana@x.example" in text and "1 mail(s) in Inbox/New" in text
