"""A chunk of mails commits once, each mail in its own savepoint: one mail failing inside
the group (even in a way that makes SQLite drop the whole transaction) costs only that
mail, and nothing is moved that did not commit."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from devkit.dovecot import DovecotSandbox
from engage_listener.cases.hooks import HookContext, RoutingDecision, SqlExecutor, load_hook
from engage_listener.service.build import build_listener
from tests.support.engine import HOOKS
from tests.support.fakes import FakeClock
from tests.support.helpers import Harness, db_rows, listener_config, make_mail

NEW, DONE = "IMAP/New", "IMAP/Done"


@pytest.mark.parametrize("statement", sorted(HOOKS))
async def test_a_hook_timing_out_inside_a_chunk_fails_only_its_mail(
    dovecot: DovecotSandbox, mailbox_user: str, tmp_path: Path, statement: str
) -> None:
    user, db = mailbox_user, tmp_path / "s.sqlite3"
    sent = [make_mail(i, sender=f"g{i}@example.com") for i in range(6)]
    sent[3] = make_mail(3, sender="g3@example.com", subject="lento")
    dovecot.create_folder(user, DONE)
    dovecot.append_many(user, NEW, sent)
    (tmp_path / "route.sql").write_text(HOOKS[statement])
    hook = load_hook(f"sql:{tmp_path / 'route.sql'}", tmp_path, 0.3)
    cfg = listener_config(dovecot, user)
    with capture_logs() as logs:
        async with Harness(cfg, db, FakeClock()) as h:
            listener = build_listener(cfg, h.store, h.clock, h.stop, hook)
            result = await listener.run_once()
    assert (result.ingested, result.failed, result.quarantined) == (5, 1, 0)
    assert (dovecot.count(user, NEW), dovecot.count(user, DONE)) == (1, 5)
    assert db_rows(db, "SELECT subject, inbox FROM cases ORDER BY id") == [
        (f"Consulta {i}", "General") for i in (0, 1, 2, 4, 5)
    ]
    assert db_rows(db, "SELECT count(*) FROM ledger") == [(5,)]
    ((attempts, error),) = db_rows(db, "SELECT attempts, last_error FROM attempts")
    assert attempts == 1 and "timed out after 0.3 s" in error
    regrouped = [e for e in logs if e["event"] == "group_commit_failed"]
    assert len(regrouped) == (1 if statement == "update" else 0), regrouped
    messages = [e for e in logs if e["event"] == "message"]
    assert len(messages) == 5, "a log line for a mail whose group was undone"


class SlowHook:
    """A routing procedure that takes its time on every mail (a fake, as hooks may be)."""

    name = "slow"

    async def run(self, ctx: HookContext, sql: SqlExecutor) -> RoutingDecision:
        await asyncio.sleep(0.15)
        return RoutingDecision(inbox="General")


async def test_a_group_never_holds_the_store_for_long(
    dovecot: DovecotSandbox, mailbox_user: str, tmp_path: Path
) -> None:
    """Heartbeats, other listeners and the outbox wait for the store while a group holds
    it: a chunk of slow mails is committed in several groups, so they wait well under
    the chunk's 3 s."""
    user, db = mailbox_user, tmp_path / "s.sqlite3"
    dovecot.create_folder(user, DONE)
    dovecot.append_many(user, NEW, [make_mail(i, sender=f"t{i}@example.com") for i in range(20)])
    cfg = listener_config(dovecot, user)
    waits: list[float] = []
    async with Harness(cfg, db, FakeClock()) as h:
        listener = build_listener(cfg, h.store, h.clock, h.stop, SlowHook())
        batch = asyncio.create_task(listener.run_once())
        while not batch.done():  # another task using the store, as a heartbeat does
            started = time.monotonic()
            await h.store.query("SELECT 1")
            waits.append(time.monotonic() - started)
            await asyncio.sleep(0.05)
        result = await batch
    assert result.ingested == 20 and dovecot.count(user, DONE) == 20
    assert len(waits) > 5 and max(waits) < 1.5, waits
