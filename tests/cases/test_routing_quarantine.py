"""Routing hooks in the real pipeline, failures, quarantine to the error folder, replay."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from devkit.dovecot import DovecotSandbox
from engage_listener.cases.hooks import HookContext, RoutingDecision, SqlExecutor, load_hook
from engage_listener.service.build import build_listener
from tests.support.config_xml import listener_xml, write_config
from tests.support.fakes import FakeClock
from tests.support.helpers import Harness, db_rows, eventually, listener_config, make_mail
from tests.support.paths import REPO

NEW, DONE = "IMAP/New", "IMAP/Done"
EXAMPLES = REPO / "examples" / "routing"


class FlakyHook:
    """A hook that fails for subjects containing 'veneno' and routes the rest."""

    name = "flaky"

    def __init__(self) -> None:
        self.calls = 0

    async def run(self, ctx: HookContext, sql: SqlExecutor) -> RoutingDecision:
        self.calls += 1
        if "veneno" in ctx.message.subject:
            raise RuntimeError("procedure failed: división por cero")
        return RoutingDecision(inbox="General", priority=2, tags=("web",))


async def test_a_failing_hook_retries_then_quarantines_without_blocking(
    dovecot: DovecotSandbox, mailbox_user: str, tmp_path: Path
) -> None:
    db = tmp_path / "s.sqlite3"
    dovecot.create_folder(mailbox_user, DONE)
    dovecot.append_many(
        mailbox_user, NEW, [make_mail(1), make_mail(2, subject="veneno"), make_mail(3)]
    )
    cfg = listener_config(dovecot, mailbox_user, max_attempts=2)
    hook = FlakyHook()
    async with Harness(cfg, db, FakeClock()) as h:
        listener = build_listener(cfg, h.store, h.clock, h.stop, hook)
        first = await listener.run_once()
        assert (first.ingested, first.failed, first.quarantined) == (2, 1, 0)
        assert dovecot.count(mailbox_user, NEW) == 1  # left for the next attempt
        second = await listener.run_once()
        assert (second.ingested, second.failed, second.quarantined) == (0, 0, 1)
    assert dovecot.count(mailbox_user, NEW) == 0
    assert dovecot.count(mailbox_user, DONE) == 2
    assert dovecot.count(mailbox_user, "IMAP/Error") == 1  # created beside the input folder
    assert db_rows(db, "SELECT inbox, priority FROM cases") == [("General", 2)] * 2
    assert db_rows(db, "SELECT tag FROM case_tags") == [("web",), ("web",)]
    ((reason, attempts, subject),) = db_rows(db, "SELECT reason, attempts, subject FROM quarantine")
    assert "división por cero" in reason and attempts == 2 and subject == "veneno"


async def test_sql_hook_routes_in_the_same_transaction(
    dovecot: DovecotSandbox, mailbox_user: str, tmp_path: Path
) -> None:
    db = tmp_path / "s.sqlite3"
    dovecot.create_folder(mailbox_user, DONE)
    dovecot.append_many(
        mailbox_user,
        NEW,
        [make_mail(1, subject="Factura pendiente"), make_mail(2, subject="Queja por demora")],
    )
    cfg = listener_config(dovecot, mailbox_user)
    hook = load_hook(f"sql:{EXAMPLES / 'pa_sys_msg_in.sql'}", tmp_path, 5.0)
    async with Harness(cfg, db, FakeClock()) as h:
        listener = build_listener(cfg, h.store, h.clock, h.stop, hook)
        await listener.run_once()
    inboxes = dict(db_rows(db, "SELECT subject, inbox FROM cases"))
    assert inboxes == {"Factura pendiente": "Facturacion", "Queja por demora": "Reclamos"}


@pytest.mark.slow
async def test_quarantine_replay_after_fixing_the_cause(
    dovecot: DovecotSandbox, mailbox_user: str, tmp_path: Path
) -> None:
    dovecot.create_folder(mailbox_user, DONE)
    dovecot.append(mailbox_user, NEW, make_mail(1, sender="desconocido@example.net"))
    xml = listener_xml(dovecot, mailbox_user, UnknownSender="Quarantine")
    config = write_config(tmp_path / "el.xml", xml)
    run = _cli("run", "--once", "--config", str(config))
    assert run.returncode == 0, run.stdout + run.stderr
    assert dovecot.count(mailbox_user, "IMAP/Error") == 1
    listed = json.loads(_cli("quarantine", "list", "--json", "--config", str(config)).stdout)
    assert [e["reason"] for e in listed] == [
        "unknown sender desconocido@example.net (UnknownSender=Quarantine)"
    ]
    shown = _cli("quarantine", "show", str(listed[0]["id"]), "--raw", "--config", str(config))
    assert b"desconocido@example.net" in shown.stdout.encode()
    (tmp_path / "c.csv").write_text("name,addresses\nDesconocido SA,desconocido@example.net\n")
    assert (
        _cli("customers", "import", str(tmp_path / "c.csv"), "--config", str(config)).returncode
        == 0
    )
    replay = _cli("quarantine", "replay", str(listed[0]["id"]), "--config", str(config))
    assert replay.returncode == 0 and "replayed into case" in replay.stdout
    cases = json.loads(_cli("cases", "--json", "--config", str(config)).stdout)
    assert [c["sender"] for c in cases] == ["desconocido@example.net"]
    again = _cli("quarantine", "replay", str(listed[0]["id"]), "--config", str(config))
    assert "already replayed" in again.stdout
    assert len(json.loads(_cli("cases", "--json", "--config", str(config)).stdout)) == 1


def test_wrong_hook_path_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("x")
    server = dataclasses.make_dataclass("S", ["host", "imap_port", "ca_file"])(
        "h", 143, tmp_path / "ca.pem"
    )
    config = write_config(
        tmp_path / "el.xml", listener_xml(server, "u", RoutingHook="sql:nope/missing.sql")
    )
    result = _cli("check-config", str(config))
    assert result.returncode == 2
    assert f"{config}:" in result.stderr and "RoutingHook" in result.stderr
    assert "missing.sql" in result.stderr


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "engage_listener", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert time.monotonic() - started < 60
    return result


async def test_failed_mail_is_retried_after_the_wait_time_without_new_mail(
    dovecot: DovecotSandbox, mailbox_user: str, tmp_path: Path
) -> None:
    db = tmp_path / "s.sqlite3"
    dovecot.create_folder(mailbox_user, DONE)
    dovecot.append(mailbox_user, NEW, make_mail(1, subject="veneno"))
    cfg = listener_config(dovecot, mailbox_user, max_attempts=2, sync_max_wait_time=60)
    clock = FakeClock()
    async with Harness(cfg, db, clock) as h:
        listener = build_listener(cfg, h.store, clock, h.stop, FlakyHook())
        task = asyncio.create_task(listener.run())
        await eventually(lambda: listener.batches == 1 and clock.sleepers > 0, what="1st try")
        assert dovecot.count(mailbox_user, NEW) == 1
        clock.advance(60)
        await eventually(
            lambda: (
                dovecot.folder_exists(mailbox_user, "IMAP/Error")
                and dovecot.count(mailbox_user, "IMAP/Error") == 1
            ),
            what="quarantine",
        )
        h.stop.set()
        await asyncio.wait_for(task, 10)


async def test_an_oversize_mail_is_listed_and_never_replayed_from_its_headers(
    dovecot: DovecotSandbox, mailbox_user: str, tmp_path: Path
) -> None:
    """MaxMessageSize from the XML: the big mail is quarantined with its headers only, and a
    replay refuses to make a case of them (the body was never fetched)."""
    dovecot.create_folder(mailbox_user, DONE)
    big = make_mail(1, body="x" * 5000)
    dovecot.append(mailbox_user, NEW, big)
    dovecot.append(mailbox_user, NEW, make_mail(2))
    xml = listener_xml(dovecot, mailbox_user, MaxMessageSize="3000")
    config = write_config(tmp_path / "el.xml", xml)
    run = _cli("run", "--once", "--config", str(config))
    assert run.returncode == 0, run.stdout + run.stderr
    assert dovecot.count(mailbox_user, "IMAP/Error") == 1
    assert dovecot.count(mailbox_user, DONE) == 1
    listed = json.loads(_cli("quarantine", "list", "--json", "--config", str(config)).stdout)
    assert [e["reason"].split(":")[0] for e in listed] == ["oversize"]
    replay = _cli("quarantine", "replay", str(listed[0]["id"]), "--config", str(config))
    assert "not replayed" in replay.stdout
    assert len(json.loads(_cli("cases", "--json", "--config", str(config)).stdout)) == 1
