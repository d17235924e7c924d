"""Hung synchronous routing hooks cannot starve the daemon (issue 14, point 7).

A sync hook used to run in asyncio's default thread pool, the one `getaddrinfo` uses
for every (re)connect; six hung hooks filled it on a two-CPU host and every reconnect
waited. These tests hang ten hook calls and check what else still works.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sys
import textwrap
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from devkit.dovecot import DovecotSandbox
from engage_listener.cases.hooks import (
    HOOK_THREADS,
    CaseView,
    HookContext,
    HookStuckError,
    MessageView,
    RoutingDecision,
    RoutingHook,
    load_hook,
)
from engage_listener.errors import HookError
from engage_listener.service.build import build_listener
from engage_listener.store.sqlite.store import SqliteStore
from tests.support.fakes import FakeClock
from tests.support.helpers import db_rows, listener_config, make_mail

NEW, DONE = "IMAP/New", "IMAP/Done"
HUNG = 10
DEFAULT_POOL = 6  # asyncio's default pool on the reporter's two-CPU host: min(32, 2 + 4)


@pytest.fixture
def hung_hook(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A sync hook that blocks on a threading.Event until the test ends."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    name = f"hung_hook_{time.monotonic_ns()}"
    (tmp_path / f"{name}.py").write_text(
        textwrap.dedent("""
            import threading
            RELEASE = threading.Event()
            def route(ctx):
                RELEASE.wait(60)
        """),
        encoding="utf-8",
    )
    try:
        yield f"python:{name}:route"
    finally:
        module = sys.modules.get(name)
        if module is not None:
            module.RELEASE.set()  # free every thread the hook still holds


async def test_hung_sync_hooks_fail_fast_and_leave_reconnects_and_other_listeners_alone(
    dovecot: DovecotSandbox, mailbox_user: str, tmp_path: Path, hung_hook: str
) -> None:
    loop = asyncio.get_running_loop()
    loop.set_default_executor(ThreadPoolExecutor(DEFAULT_POOL))
    other_user = f"{mailbox_user}-b"
    for user in (mailbox_user, other_user):
        dovecot.create_folder(user, DONE)
    dovecot.append_many(mailbox_user, NEW, [make_mail(i) for i in range(HUNG)])
    dovecot.append_many(other_user, NEW, [make_mail(100 + i) for i in range(3)])
    hooked = listener_config(dovecot, mailbox_user, id="Hooked", max_attempts=1)
    # By name, so its connect resolves through getaddrinfo in the default pool.
    other = dataclasses.replace(listener_config(dovecot, other_user, id="Other"), host="localhost")
    db = tmp_path / "s.sqlite3"
    store, stop = SqliteStore(db), asyncio.Event()
    await store.open()
    try:
        hook = load_hook(hung_hook, tmp_path, 0.3)
        first = build_listener(hooked, store, FakeClock(), stop, hook)
        result = await asyncio.wait_for(first.run_once(), 30)
        assert (result.ingested, result.quarantined) == (0, HUNG)

        # Four hook threads are still blocked now; the daemon's own work goes on.
        resolved = await asyncio.wait_for(loop.getaddrinfo("localhost", 143), 2)
        assert resolved
        second = build_listener(other, store, FakeClock(), stop)
        done = await asyncio.wait_for(second.run_once(), 10)
        assert done.ingested == 3
    finally:
        await store.close()

    reasons = [r for (r,) in db_rows(db, "SELECT reason FROM quarantine ORDER BY id")]
    timed_out = [r for r in reasons if "timed out after 0.3 s" in r]
    stuck = [r for r in reasons if "routing_hook_stuck" in r]
    assert (len(timed_out), len(stuck)) == (HOOK_THREADS, HUNG - HOOK_THREADS), reasons
    assert db_rows(db, "SELECT listener, count(*) FROM cases GROUP BY listener") == [("Other", 3)]
    assert dovecot.count(mailbox_user, "IMAP/Error") == HUNG  # the quarantine path


def context() -> HookContext:
    return HookContext(
        listener="Default",
        case=CaseView(1, "C-000001", None, "open", None, "Hola", True),
        message=MessageView(1, None, "ana@example.com", "Ana", "Hola", "", (), None),
        customer=None,
    )


async def test_a_hook_thread_freed_by_its_call_is_used_again(
    tmp_path: Path, hung_hook: str, store: SqliteStore
) -> None:
    hook = load_hook(hung_hook, tmp_path, 0.1)
    for _ in range(HOOK_THREADS):
        with pytest.raises(HookError, match="timed out"):
            await run_in_tx(store, hook)
    with pytest.raises(HookStuckError, match="routing_hook_stuck"):
        await run_in_tx(store, hook)
    sys.modules[hung_hook.split(":")[1]].RELEASE.set()
    deadline = time.monotonic() + 5  # the calls return, their threads are free again
    while True:
        try:
            assert await run_in_tx(store, hook) == RoutingDecision()
            break
        except HookStuckError:
            assert time.monotonic() < deadline, "the hook's threads were never freed"
            await asyncio.sleep(0.02)


async def run_in_tx(store: SqliteStore, hook: RoutingHook) -> RoutingDecision:
    async with store.transaction() as tx:
        return await hook.run(context(), tx)
