"""POP3 listeners and endpoints built directly (not from an XML configuration), for the
tests that drive a `Pop3Listener` themselves: against the Dovecot sandbox, a hostile
server or a socket that never answers."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

from devkit.dovecot import DovecotSandbox
from engage_listener.cases.engine import CaseEngine, EngineSettings
from engage_listener.clock import Clock
from engage_listener.intake.contract import Handler
from engage_listener.observe.logs import get_logger
from engage_listener.sources.pop3.listener import Pop3Listener, Pop3Settings
from engage_listener.sources.pop3.session import Pop3Endpoint, Pop3Session
from engage_listener.store.sqlite.store import SqliteStore
from tests.support.fakes import FakeClock

POLL_SECONDS = 60.0  # SyncMaxWaitTime: the tests run polls themselves (run_once)


def dovecot_pop3(
    dovecot: DovecotSandbox, user: str, *, implicit: bool = False, **changes: Any
) -> Pop3Endpoint:
    """`user`'s POP3 account on the sandbox: plain port (STLS offered), or POP3S."""
    ep = Pop3Endpoint(
        host=dovecot.host,
        port=dovecot.pop3s_port if implicit else dovecot.pop3_port,
        use_ssl=implicit,
        username=user,
        password=DovecotSandbox.PASSWORD,
        ca_file=str(dovecot.ca_file),
        timeout=10.0,
    )
    return dataclasses.replace(ep, **changes)


def pop3_engine(store: SqliteStore, lid: str = "Pop") -> CaseEngine:
    """The case engine a listener's mail goes to (attachments kept in the mail)."""
    return CaseEngine(store, EngineSettings(lid, extract_attachments=False))


def pop3_listener(
    ep: Pop3Endpoint,
    store: SqliteStore,
    *,
    lid: str = "Pop",
    handler: Handler | None = None,
    clock: Clock | None = None,
    stop: asyncio.Event | None = None,
    **settings: Any,
) -> Pop3Listener:
    """A listener on `ep`: 10 mails a poll, `settings` for the rest of `Pop3Settings`."""
    settings.setdefault("sync_max_wait_time", POLL_SECONDS)
    settings.setdefault("sync_max_changes_count", 10)

    async def connect() -> Pop3Session:
        return await Pop3Session.open(ep)

    return Pop3Listener(
        Pop3Settings(lid, **settings),
        connect=connect,
        store=store,
        handler=handler or pop3_engine(store, lid),
        clock=clock or FakeClock(),
        stop=stop or asyncio.Event(),
        log=get_logger(listener=lid),
    )
