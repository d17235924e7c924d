"""Case-engine settings as they come from the XML: the loader's values must reach the engine
(subject prefixes, MaxAttempts with a routing hook that times out), threading by References
alone, and the DefaultCustomer configuration error with its file and line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from devkit.dovecot import DovecotSandbox
from engage_listener.config.load import load_config
from engage_listener.config.model import ListenerConfig
from engage_listener.errors import ConfigError
from engage_listener.service.build import build_listener, load_hooks
from engage_listener.store.sqlite.store import SqliteStore
from tests.support.config_xml import listener_xml, minimal_listener, wrap, write_config
from tests.support.engine import HOOKS, engine, key
from tests.support.fakes import FakeClock
from tests.support.helpers import Harness, db_rows, make_mail

NEW, DONE, ERROR = "IMAP/New", "IMAP/Done", "IMAP/Error"


def _load(tmp_path: Path, dovecot: DovecotSandbox, user: str, **extra: str) -> ListenerConfig:
    config = write_config(tmp_path / "el.xml", listener_xml(dovecot, user, **extra))
    (cfg,) = load_config(config).imap_listeners
    return cfg


async def _run_once(dovecot: DovecotSandbox, user: str, db: Path, cfg: ListenerConfig,
                    mails: list[bytes]) -> None:  # fmt: skip
    dovecot.create_folder(user, DONE)
    dovecot.append_many(user, NEW, mails)
    async with Harness(cfg, db, FakeClock()) as h:
        assert h.listener is not None
        result = await h.listener.run_once()
    assert (result.ingested, result.failed, result.quarantined) == (len(mails), 0, 0)


# ----- 6. SubjectPrefixes from the XML reach the engine ----------------------------------------
@pytest.mark.parametrize("reply", ["SVAR: Entrega pendiente", "vastaus:  SVAR: entrega PENDIENTE"])
async def test_subject_prefixes_from_the_xml_thread_a_reply_into_the_open_case(
    dovecot: DovecotSandbox, mailbox_user: str, tmp_path: Path, reply: str
) -> None:
    cfg = _load(tmp_path, dovecot, mailbox_user, SubjectPrefixes=" SVAR ,VASTAUS: ")
    assert cfg.subject_prefixes == ("SVAR", "VASTAUS:")
    db = tmp_path / "s.sqlite3"
    await _run_once(dovecot, mailbox_user, db, cfg, [make_mail(1, subject="Entrega pendiente")])
    await _run_once(dovecot, mailbox_user, db, cfg, [make_mail(2, subject=reply)])
    assert db_rows(db, "SELECT count(*) FROM cases") == [(1,)]
    assert db_rows(db, "SELECT count(DISTINCT case_id), count(*) FROM messages") == [(1, 2)]


async def test_without_subject_prefixes_the_same_reply_opens_a_new_case(
    dovecot: DovecotSandbox, mailbox_user: str, tmp_path: Path
) -> None:
    """The control: SVAR is no built-in prefix, so only the setting makes the reply join."""
    cfg = _load(tmp_path, dovecot, mailbox_user)
    assert cfg.subject_prefixes == ()
    db = tmp_path / "s.sqlite3"
    await _run_once(dovecot, mailbox_user, db, cfg, [make_mail(1, subject="Entrega pendiente")])
    await _run_once(
        dovecot, mailbox_user, db, cfg, [make_mail(2, subject="SVAR: Entrega pendiente")]
    )
    assert db_rows(db, "SELECT count(*) FROM cases") == [(2,)]


# ----- 7. MaxAttempts (default 3) with a routing hook that times out --------------------------
@pytest.mark.parametrize("max_attempts", [None, "2"])
async def test_a_timing_out_sql_hook_is_quarantined_after_max_attempts_runs(
    dovecot: DovecotSandbox, mailbox_user: str, tmp_path: Path, max_attempts: str | None
) -> None:
    (tmp_path / "route.sql").write_text(HOOKS["select"])  # slow only for subject 'lento'
    extra = {"RoutingHook": "sql:route.sql", "RoutingTimeout": "1"}
    if max_attempts is not None:
        extra["MaxAttempts"] = max_attempts
    config = load_config(
        write_config(tmp_path / "el.xml", listener_xml(dovecot, mailbox_user, **extra))
    )
    (cfg,) = config.imap_listeners
    expected = int(max_attempts or 3)
    assert (cfg.max_attempts, cfg.routing_timeout) == (expected, 1)
    hook = load_hooks(config)[cfg.id]
    user, db = mailbox_user, tmp_path / "s.sqlite3"
    dovecot.create_folder(user, DONE)
    dovecot.append_many(user, NEW, [make_mail(1, subject="lento"), make_mail(2, sender="b@x.es")])
    results = []
    with capture_logs() as logs:
        async with Harness(cfg, db, FakeClock()) as h:
            listener = build_listener(cfg, h.store, h.clock, h.stop, hook)
            for _ in range(expected):
                result = await listener.run_once()
                results.append((result.ingested, result.failed, result.quarantined))
                if result.quarantined:
                    break
    # The fast mail is routed at once; the slow one fails expected - 1 times, then is held.
    assert results == [(1, 1, 0)] + [(0, 1, 0)] * (expected - 2) + [(0, 0, 1)]
    failures = [e for e in logs if e["event"] == "message_failed"]
    assert [e["attempts"] for e in failures] == list(range(1, expected + 1))
    assert all("timed out after 1 s" in e["error"] for e in failures)
    assert {e["max_attempts"] for e in failures} == {expected}
    ((reason, attempts, subject),) = db_rows(db, "SELECT reason, attempts, subject FROM quarantine")
    assert (attempts, subject) == (expected, "lento") and "timed out after 1 s" in reason
    assert db_rows(db, "SELECT sender, inbox FROM cases") == [("b@x.es", "General")]
    assert (dovecot.count(user, NEW), dovecot.count(user, DONE), dovecot.count(user, ERROR)) == (
        0,
        1,
        1,
    )


# ----- 8. threading by References alone ---------------------------------------------------------
def _with_references(raw: bytes, references: str) -> bytes:
    """The mail with a References field (as written, folding included) and no In-Reply-To."""
    return raw.replace(b"MIME-Version:", f"References: {references}\r\nMIME-Version:".encode())


@pytest.mark.parametrize(
    "references",
    [
        "<root-1@cliente.example>",  # a direct reply whose client wrote no In-Reply-To
        "<root-1@cliente.example> <agente-1@crm.example.org>",  # the root, an unknown parent
        "<otro@lista.example>\r\n <root-1@cliente.example>\r\n\t<agente-2@crm.example.org>",
    ],
)
async def test_references_alone_join_the_open_case(store: SqliteStore, references: str) -> None:
    e = engine(store)
    first = await e.ingest(
        key(), make_mail(1, subject="Reclamo por corte", message_id="<root-1@cliente.example>")
    )
    reply_raw = _with_references(make_mail(2, subject="Otra cosa distinta"), references)
    assert b"In-Reply-To" not in reply_raw
    reply = await e.ingest(key(), reply_raw)
    assert first.new_case and not reply.new_case
    assert reply.case_id == first.case_id
    in_reply_to = db_rows(store.path, "SELECT in_reply_to FROM messages ORDER BY id")
    assert in_reply_to == [(None,), (None,)]


async def test_references_alone_of_a_long_thread_join_by_the_newest_reference(
    store: SqliteStore,
) -> None:
    """60 older references the store does not know (agents' replies from the CRM), then the
    customer's previous mail, which it does: the reply belongs to that mail's case."""
    e = engine(store)
    parent = await e.ingest(
        key(), make_mail(1, subject="Reclamo largo", message_id="<parent@cliente.example>")
    )
    older = " ".join(f"<agente-{n}@crm.example.org>" for n in range(60))
    reply_raw = _with_references(
        make_mail(2, subject="Otra cosa distinta"),
        f"{older} <parent@cliente.example>",
    )
    reply = await e.ingest(key(), reply_raw)
    assert reply.case_id == parent.case_id and not reply.new_case


async def test_references_to_unknown_mail_open_a_new_case(store: SqliteStore) -> None:
    e = engine(store)
    first = await e.ingest(
        key(), make_mail(1, subject="Reclamo por corte", message_id="<root-2@cliente.example>")
    )
    other = await e.ingest(
        key(),
        _with_references(
            make_mail(2, sender="vecino@example.net", subject="Otra cosa distinta"),
            "<nadie@example.net> <agente-3@crm.example.org>",
        ),
    )
    assert other.new_case and other.case_id != first.case_id


# ----- 9. DefaultCustomer without DefaultCustomerId ----------------------------------------------
@pytest.mark.parametrize("block", ["ImapListener", "Pop3Listener"])
def test_default_customer_without_id_is_reported_with_file_and_line(
    tmp_path: Path, block: str
) -> None:
    body = minimal_listener(
        "<UseSsl>True</UseSsl>\n<UnknownSender>DefaultCustomer</UnknownSender>\n"
    )
    path = tmp_path / "el.xml"
    path.write_bytes(wrap(body.replace("ImapListener", block)))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    (problem,) = caught.value.problems
    assert (problem.file, problem.line, problem.element) == (str(path), 7, "UnknownSender")
    expected = f"{path}:7: UnknownSender: DefaultCustomer needs a DefaultCustomerId"
    assert str(problem) == expected

    check = subprocess.run(
        [sys.executable, "-m", "engage_listener", "check-config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert check.returncode == 2
    assert expected in check.stderr.splitlines()
    assert "1 configuration problem(s)" in check.stderr


def test_default_customer_with_its_id_loads(tmp_path: Path) -> None:
    extra = (
        "<DefaultCustomerId>7</DefaultCustomerId>\n<UnknownSender>DefaultCustomer</UnknownSender>\n"
    )
    path = tmp_path / "el.xml"
    path.write_bytes(wrap(minimal_listener(extra)))
    (cfg,) = load_config(path).imap_listeners
    assert (cfg.unknown_sender, cfg.default_customer_id) == ("DefaultCustomer", 7)
