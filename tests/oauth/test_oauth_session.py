"""An OAuth2 access token expiring inside an open IMAP session.

Microsoft 365 ends a session when its token expires ("* BYE ... AccessTokenExpired"); the
daemon must then log in again with a new token and go on taking mail, losing none.
Dovecot does not end sessions by itself, so the test ends it (`kill_connections`) once
the token has expired, as the real server would.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from pathlib import Path

from devkit.dovecot import DovecotSandbox
from engage_listener.cases.engine import CaseEngine
from engage_listener.clock import SystemClock
from engage_listener.config.load import parse_config
from engage_listener.oauth.provider import provider_for
from engage_listener.observe.logs import get_logger
from engage_listener.service.build import engine_settings
from engage_listener.sources.imap.listener import Listener, ListenerSettings
from engage_listener.sources.imap.session import ImapSession
from engage_listener.store.sqlite.store import SqliteStore
from tests.support.helpers import db_rows, eventually, make_mail
from tests.support.oauth import Account, imap_endpoint, microsoft_config_xml
from tests.support.servers.oauth_server import OAuthTestServer

LIFETIME = 3  # seconds an access token lives here


async def test_session_ended_at_token_expiry_logs_in_again_with_a_new_token(
    dovecot_oauth: DovecotSandbox, shared_idp: OAuthTestServer, account: Account, tmp_path: Path
) -> None:
    user, db = account.user, tmp_path / "cases.sqlite3"
    shared_idp.expires_in = LIFETIME
    dovecot_oauth.create_folder(user, "IMAP/Done")
    (cfg,) = parse_config(
        microsoft_config_xml(dovecot_oauth, shared_idp, account).encode(), tmp_path / "el.xml"
    ).imap_listeners
    assert cfg.authentication is not None
    endpoint = dataclasses.replace(
        imap_endpoint(dovecot_oauth, account, shared_idp),
        token_provider=provider_for(cfg.authentication, user, cache=account.cache, purpose="imap"),
    )
    store, stop = SqliteStore(db), asyncio.Event()
    await store.open()
    listener = Listener(
        ListenerSettings(
            id=cfg.id,
            input_folder="IMAP/New",
            output_folder="IMAP/Done",
            sync_max_wait_time=60.0,
            sync_max_changes_count=1,
        ),
        connect=lambda: ImapSession.open(endpoint),
        store=store,
        handler=CaseEngine(store, engine_settings(cfg, None)),
        clock=SystemClock(),
        stop=stop,
        log=get_logger(listener=cfg.id),
    )
    task = asyncio.create_task(listener.run())
    cases = lambda: len(db_rows(db, "SELECT id FROM cases"))  # noqa: E731
    try:
        dovecot_oauth.append(user, "IMAP/New", make_mail(1))
        await eventually(lambda: cases() == 1, what="the first mail's case")
        first_tokens = shared_idp.grants("client_credentials")
        logged_in = time.monotonic()
        await asyncio.sleep(LIFETIME + 0.5)  # the session's token has expired
        assert listener.state != "error"
        dovecot_oauth.kill_connections(user)  # the server ends the session
        dovecot_oauth.append(user, "IMAP/New", make_mail(2))
        await eventually(lambda: cases() == 2, timeout=30, what="the mail after the new login")
        assert (
            shared_idp.grants("client_credentials") > first_tokens
        )  # a new token, not the old one
        assert time.monotonic() - logged_in > LIFETIME
        assert listener.last_error is None or "token" not in listener.last_error.lower()
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
        await store.close()
    assert dovecot_oauth.count(user, "IMAP/Done") == 2
    assert db_rows(db, "SELECT count(*) FROM ledger") == [(2,)]
