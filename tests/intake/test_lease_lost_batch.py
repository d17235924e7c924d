"""An IMAP batch whose listener's lease is lost in the middle of a group commit (issue 16
point 3, fencing) stops at once: the group rolls back with `LeaseLost` (the first mail's
fenced ledger row fails with the next mail's first read, and that mail's undo fails too),
the mails are not taken again one by one as after other group failures, and nothing is
moved. Against Dovecot and a real PostgreSQL."""

from __future__ import annotations

import asyncio
from pathlib import Path

import psycopg
import pytest
from structlog.testing import capture_logs

from devkit.dovecot import DovecotSandbox
from devkit.postgres import PostgresServer
from engage_listener.cases.hooks import HookContext, RoutingDecision, SqlExecutor
from engage_listener.config.model import StoreConfig
from engage_listener.errors import LeaseLost
from engage_listener.service.build import build_listener
from engage_listener.store.open import build_store
from tests.support.fakes import FakeClock
from tests.support.helpers import listener_config, make_mail
from tests.support.postgres import fresh_database, postgres_server

__all__ = ["postgres_server"]  # a fixture
NEW, DONE = "IMAP/New", "IMAP/Done"
OWNER, OTHER = "daemon-a", "daemon-b"


class TakeOver:
    """A routing procedure (a fake) during whose first run another daemon takes the
    listener's lease: nothing has locked it yet, the first mail's ledger row (and its
    check) comes after routing."""

    name = "take-over"

    def __init__(self, url: str, listener: str) -> None:
        self.url, self.listener = url, listener
        self.calls = 0

    async def run(self, ctx: HookContext, sql: SqlExecutor) -> RoutingDecision:
        self.calls += 1
        if self.calls == 1:
            async with await psycopg.AsyncConnection.connect(self.url, autocommit=True) as c:
                await c.execute(
                    "UPDATE listener_leases SET owner = %s, fence = fence + 1 WHERE listener = %s",
                    (OTHER, self.listener),
                )
        return RoutingDecision(inbox="General")


async def test_a_batch_losing_its_lease_in_a_group_stops_at_once_and_moves_nothing(
    dovecot: DovecotSandbox, mailbox_user: str, postgres_server: PostgresServer
) -> None:
    user, url = mailbox_user, fresh_database(postgres_server)
    database = url.rsplit("/", 1)[1]
    dovecot.create_folder(user, DONE)
    dovecot.append_many(user, NEW, [make_mail(i, sender=f"l{i}@example.com") for i in range(4)])
    cfg = listener_config(dovecot, user)
    store = build_store(StoreConfig(Path("unused"), url=url), owner=OWNER)
    await store.open()
    postgres_server.sql(
        f"INSERT INTO daemons VALUES ('{OWNER}', 'h', 1, now(), now(), NULL),"
        f" ('{OTHER}', 'h', 2, now(), now(), NULL)",
        f"INSERT INTO listener_leases (listener, owner, fence, expires_at)"
        f" VALUES ('{cfg.id}', '{OWNER}', 1, now() + interval '1 hour')",
        database=database,
    )
    hook = TakeOver(url, cfg.id)
    try:
        with capture_logs() as logs, pytest.raises(LeaseLost):
            listener = build_listener(cfg, store, FakeClock(), asyncio.Event(), hook)
            await listener.run_once()
    finally:
        await store.close()
    assert hook.calls == 1, "mails taken again one by one after the lease was lost"
    assert not [e for e in logs if e["event"] == "group_commit_failed"]
    assert (dovecot.count(user, NEW), dovecot.count(user, DONE)) == (4, 0)
    counts = postgres_server.sql(
        "SELECT (SELECT count(*) FROM cases) + (SELECT count(*) FROM messages)"
        " + (SELECT count(*) FROM ledger)",
        database=database,
    )
    assert counts.strip() == "0"
