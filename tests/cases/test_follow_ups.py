"""Issue 14.5: a case token or a reply header joins a case only for the case's people and
only within the listener's CaseProcess; anyone else opens a new case that records the case
it named (`related_case_id`, shown by `cases`)."""

from __future__ import annotations

import asyncio
import itertools
import json
import sqlite3
import subprocess
import sys
from pathlib import Path

from engage_listener.cases.engine import CaseEngine, EngineSettings
from engage_listener.ops import admin
from engage_listener.service.build import engine_settings
from engage_listener.store.interface import MailKey
from engage_listener.store.sqlite.schema import MIGRATIONS
from engage_listener.store.sqlite.store import SqliteStore
from tests.support.config_xml import DONE, NEW, block, config_text
from tests.support.helpers import db_rows

_uids = itertools.count(1)
CUSTOMER = "ana@cliente.example"
LISTENER = {
    "HostName": "127.0.0.1",
    "Port": "993",
    "UserName": "u",
    "Password": "p",
    "UseSsl": "True",
    "InputFolder": NEW,
    "OutputFolder": DONE,
    "SyncMaxWaitTime": "60",
    "SyncMaxChangesCount": "10",
}
CONFIG = config_text(block("ImapListener", "L", LISTENER))


def key(listener: str = "L") -> MailKey:
    return MailKey(listener, "IMAP/New", "1", str(next(_uids)))


def engine(store: SqliteStore, listener: str = "L", **settings: object) -> CaseEngine:
    return CaseEngine(
        store,
        EngineSettings(listener=listener, extract_attachments=False, **settings),  # type: ignore[arg-type]
    )


def mail(
    n: int,
    sender: str = CUSTOMER,
    subject: str = "Factura duplicada",
    *,
    cc: str = "",
    in_reply_to: str = "",
    references: str = "",
) -> bytes:
    lines = [
        f"From: Someone <{sender}>",
        "To: soporte@example.org",
        *([f"Cc: {cc}"] if cc else []),
        f"Subject: {subject}",
        f"Message-ID: <f{n}@mail.example>",
        *([f"In-Reply-To: {in_reply_to}"] if in_reply_to else []),
        *([f"References: {references}"] if references else []),
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=utf-8",
        "",
        f"texto {n}",
        "",
    ]
    return "\r\n".join(lines).encode()


def related(store: SqliteStore, case_id: int | None) -> int | None:
    ((value,),) = db_rows(store.path, "SELECT related_case_id FROM cases WHERE id = ?", (case_id,))
    return int(value) if value is not None else None


async def test_a_stranger_with_the_case_token_gets_a_new_case_related_to_it(
    store: SqliteStore,
) -> None:
    e = engine(store)
    first = await e.ingest(key(), mail(1))
    token = f"RE: [Case#{first.case_number}] Factura duplicada"
    stranger = await e.ingest(key(), mail(2, "intruso@evil.example", token))
    guessed = await e.ingest(key(), mail(3, "intruso@evil.example", "hola [Case#1]"))
    assert stranger.new_case and stranger.case_id != first.case_id
    assert guessed.new_case and guessed.case_id not in (first.case_id, stranger.case_id)
    assert related(store, stranger.case_id) == first.case_id
    assert related(store, guessed.case_id) == first.case_id
    case_one = db_rows(store.path, "SELECT count(*) FROM messages WHERE case_id = 1")
    assert case_one == [(1,)]  # nothing of the stranger's went into case 1


async def test_a_stranger_with_in_reply_to_or_references_gets_a_new_related_case(
    store: SqliteStore,
) -> None:
    e = engine(store)
    first = await e.ingest(key(), mail(1))
    by_header = await e.ingest(
        key(), mail(2, "intruso@evil.example", "otra cosa", in_reply_to="<f1@mail.example>")
    )
    by_refs = await e.ingest(
        key(), mail(3, "otro@evil.example", "otra más", references="<x@y> <f1@mail.example>")
    )
    for done in (by_header, by_refs):
        assert done.new_case and done.case_id != first.case_id
        assert related(store, done.case_id) == first.case_id
    cases = {c.id: c for c in await store.list_cases()}
    assert cases[by_header.case_id or 0].related_case_number == first.case_number


async def test_the_customers_other_address_and_cc_and_to_participants_join(
    store: SqliteStore, tmp_path: Path
) -> None:
    csv = tmp_path / "c.csv"
    csv.write_text(f"name,addresses\nCliente SA,{CUSTOMER} compras@cliente.example\n")
    await admin.import_customers(store, csv)
    e = engine(store)
    first = await e.ingest(key(), mail(1, cc="Colega <colega@otra.example>"))
    token = f"RE: [Case#{first.case_number}] Factura duplicada"
    other_address = await e.ingest(key(), mail(2, "compras@cliente.example", token))
    cc_header = await e.ingest(
        key(), mail(3, "Colega@Otra.example", "Re: algo", in_reply_to="<f1@mail.example>")
    )
    to_token = await e.ingest(key(), mail(4, "soporte@example.org", f"[Case#{first.case_number}]"))
    for done in (other_address, cc_header, to_token):
        assert not done.new_case and done.case_id == first.case_id
    assert db_rows(store.path, "SELECT count(*), max(related_case_id) FROM cases") == [(1, None)]


async def test_a_participant_cced_on_a_follow_up_may_then_join(store: SqliteStore) -> None:
    e = engine(store)
    first = await e.ingest(key(), mail(1))
    token = f"[Case#{first.case_number}]"
    await e.ingest(key(), mail(2, subject=f"RE: {token}", cc="jefe@cliente2.example"))
    boss = await e.ingest(key(), mail(3, "jefe@cliente2.example", f"RE: {token}"))
    assert boss.case_id == first.case_id and not boss.new_case


async def test_another_listeners_process_is_never_joined_even_by_its_customer(
    store: SqliteStore,
) -> None:
    reclamos = engine(store, "A", process="Reclamos")
    first = await reclamos.ingest(key("A"), mail(1))
    token = f"RE: [Case#{first.case_number}] Factura duplicada"
    for n, other in enumerate(
        (
            engine(store, "B", process="Consultas"),
            engine(store, "B2", process="Consultas", follow_ups_from="Anyone"),
            engine(store, "C"),  # no process: its own cases only
        )
    ):
        # a subject of its own each time: the customer's case by subject is not the point
        by_token = await other.ingest(key(), mail(next(_uids), subject=f"{token} {n}"))
        by_header = await other.ingest(
            key(), mail(next(_uids), subject=f"algo {n}", in_reply_to="<f1@mail.example>")
        )
        for done in (by_token, by_header):
            assert done.new_case and done.case_id != first.case_id
            assert related(store, done.case_id) == first.case_id
    same_process = await engine(store, "A2", process="Reclamos").ingest(
        key(), mail(99, subject=token)
    )
    assert same_process.case_id == first.case_id  # the same CaseProcess on another mailbox


async def test_without_a_process_another_listeners_cases_are_not_joined(store: SqliteStore) -> None:
    first = await engine(store, "A").ingest(key("A"), mail(1))
    again = await engine(store, "A").ingest(
        key("A"), mail(2, subject=f"[Case#{first.case_number}]")
    )
    other = await engine(store, "B").ingest(
        key("B"), mail(3, subject=f"[Case#{first.case_number}]")
    )
    assert again.case_id == first.case_id
    assert other.new_case and related(store, other.case_id) == first.case_id


async def test_follow_ups_from_anyone_lets_strangers_join_as_before(store: SqliteStore) -> None:
    e = engine(store, follow_ups_from="Anyone")
    first = await e.ingest(key(), mail(1))
    by_token = await e.ingest(key(), mail(2, "x@evil.example", f"[Case#{first.case_number}]"))
    by_header = await e.ingest(
        key(), mail(3, "y@evil.example", "z", in_reply_to="<f1@mail.example>")
    )
    assert {by_token.case_id, by_header.case_id} == {first.case_id}


def test_follow_ups_from_the_configuration_reaches_the_engine() -> None:
    from tests.support.helpers import listener_config  # noqa: PLC0415 - needs no sandbox here

    class _Sandbox:  # listener_config reads only these
        host, imap_port, ca_file = "127.0.0.1", 1, None

    cfg = listener_config(_Sandbox(), "u", follow_ups_from="Anyone")  # type: ignore[arg-type]
    assert engine_settings(cfg, None).follow_ups_from == "Anyone"
    default = listener_config(_Sandbox(), "u")  # type: ignore[arg-type]
    assert engine_settings(default, None).follow_ups_from == "Participants"


def test_cases_json_and_text_show_the_related_case(tmp_path: Path) -> None:
    db = tmp_path / "store.sqlite3"

    async def fill() -> None:
        store = SqliteStore(db)
        await store.open()
        try:
            first = await engine(store).ingest(key(), mail(1))
            await engine(store).ingest(
                key(), mail(2, "intruso@evil.example", f"[Case#{first.case_number}]")
            )
        finally:
            await store.close()

    asyncio.run(fill())
    config = tmp_path / "c.xml"
    config.write_text(CONFIG)
    base = [sys.executable, "-m", "engage_listener", "cases", "--config", str(config)]
    shown = subprocess.run([*base, "--json"], capture_output=True, text=True, check=False)
    assert shown.returncode == 0, shown.stderr
    rows = json.loads(shown.stdout)
    assert [(r["related_case_id"], r["related_case_number"]) for r in rows] == [
        (None, None),
        (1, "000001"),
    ]
    text = subprocess.run(base, capture_output=True, text=True, check=False)
    assert "related to case 000001" in text.stdout, text.stdout + text.stderr


async def test_an_older_store_keeps_its_senders_as_participants(tmp_path: Path) -> None:
    """Migration 5 carries the senders of mails stored before it into case_participants."""
    db = tmp_path / "old.sqlite3"
    with sqlite3.connect(db) as conn:
        for script in MIGRATIONS[:4]:
            conn.executescript(script)
        conn.execute("PRAGMA user_version=4")
        conn.execute(
            "INSERT INTO cases (id, case_number, listener, sender, subject, created_at,"
            " updated_at) VALUES (1, '000001', 'L', 'Ana@Cliente.example', 's', 'x', 'x')"
        )
        conn.execute(
            "INSERT INTO messages (case_id, listener, message_id, sender, subject, received_at,"
            " sha256, size, parsed, raw) VALUES (1, 'L', 'old@x', 'Ana@Cliente.example', 's',"
            " 'x', 'h', 1, 1, x'00')"
        )
    store = SqliteStore(db)
    await store.open()
    try:
        done = await engine(store).ingest(key(), mail(5, subject="[Case#000001]"))
        stranger = await engine(store).ingest(
            key(), mail(6, "z@evil.example", subject="[Case#000001]")
        )
    finally:
        await store.close()
    assert done.case_id == 1 and not done.new_case
    assert stranger.new_case
