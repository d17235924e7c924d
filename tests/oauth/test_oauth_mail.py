"""XOAUTH2 against real servers: Dovecot's oauth2 passdb (IMAP, POP3) and aiosmtpd (SMTP).

Dovecot asks the test identity provider (token introspection over HTTP) about every
token, so a login is accepted or refused for real; the tokens come from msal talking
HTTPS to the same provider. Covered: a good login, a token that expired early at the
provider (refused, refreshed once, retried), a token refused even after a refresh
(reported at once with advice, never hanging on the error challenge), and secrets
absent from protocol logs, the daemon's log, exceptions and the token cache file.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import os
import subprocess
import sys
import time
from email.message import EmailMessage
from pathlib import Path

import pytest

from devkit.dovecot import DovecotSandbox
from engage_listener.cases.engine import CaseEngine
from engage_listener.clock import SystemClock
from engage_listener.config.load import parse_config
from engage_listener.errors import AuthenticationError
from engage_listener.oauth.provider import TokenRefused, provider_for
from engage_listener.observe.logs import configure_logging, get_logger
from engage_listener.observe.protolog import ProtocolLog
from engage_listener.outbox.smtp import SmtpTemporaryError, send_message
from engage_listener.service.build import engine_settings
from engage_listener.sources.imap.listener import Listener, ListenerSettings
from engage_listener.sources.imap.session import ImapSession
from engage_listener.sources.pop3.session import Pop3Session
from engage_listener.store.sqlite.store import SqliteStore
from tests.support.helpers import db_rows, make_mail
from tests.support.oauth import (
    SECRET,
    Account,
    assert_clean,
    imap_endpoint,
    last_token,
    microsoft_config_xml,
    pop3_endpoint,
)
from tests.support.servers.oauth_server import OAuthTestServer, ms_auth, token_cache
from tests.support.servers.smtp_server import SmtpTestServer


# ----- IMAP -------------------------------------------------------------------------------------
async def test_imap_logs_in_with_xoauth2_and_the_protocol_log_masks_it(
    dovecot_oauth: DovecotSandbox, shared_idp: OAuthTestServer, account: Account
) -> None:
    session = await ImapSession.open(imap_endpoint(dovecot_oauth, account, shared_idp))
    try:
        assert session.tls == "starttls"
        assert (await session.select("INBOX")).name == "INBOX"
    finally:
        await session.logout()
    log = account.protolog.read_text()
    assert "AUTHENTICATE XOAUTH2 ***" in log and "Logged in" in log
    assert_clean(log + account.cache.path.read_text(), shared_idp)
    assert "method=XOAUTH2" in dovecot_oauth.log_file.read_text()


async def test_imap_token_expired_early_is_refreshed_and_retried(
    dovecot_oauth: DovecotSandbox, shared_idp: OAuthTestServer, account: Account
) -> None:
    endpoint = imap_endpoint(dovecot_oauth, account, shared_idp)
    await (await ImapSession.open(endpoint)).logout()
    shared_idp.expire(last_token(shared_idp, account.user))  # our cache still believes it is good
    before = shared_idp.grants("client_credentials")
    session = await ImapSession.open(endpoint)
    await session.select("INBOX")
    await session.logout()
    assert shared_idp.grants("client_credentials") == before + 1
    assert account.protolog.read_text().count("AUTHENTICATE XOAUTH2 ***") == 3


async def test_imap_refused_token_fails_at_once_with_advice(
    dovecot_oauth: DovecotSandbox, shared_idp: OAuthTestServer, account: Account
) -> None:
    shared_idp.deny(account.user)  # e.g. the app was never given access to the mailbox
    started = time.monotonic()
    with pytest.raises(TokenRefused) as caught:
        await ImapSession.open(imap_endpoint(dovecot_oauth, account, shared_idp))
    assert time.monotonic() - started < 5  # the error challenge was answered, no hang
    text = str(caught.value)
    assert "AUTHENTICATIONFAILED" in text and '"status":"401"' in text
    assert "New-ServicePrincipal" in text  # what to do about it
    assert shared_idp.grants("client_credentials") >= 2  # one forced refresh before giving up
    assert_clean(text + account.protolog.read_text(), shared_idp)


async def test_imap_without_sasl_ir_answers_the_empty_challenge(
    dovecot_oauth: DovecotSandbox,
    shared_idp: OAuthTestServer,
    account: Account,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Servers without SASL-IR get the response after "+"; refusals still end at once."""
    offered = ImapSession.has_capability
    monkeypatch.setattr(
        ImapSession, "has_capability", lambda s, name: name != "SASL-IR" and offered(s, name)
    )
    endpoint = imap_endpoint(dovecot_oauth, account, shared_idp)
    await (await ImapSession.open(endpoint)).logout()
    shared_idp.deny(account.user)
    started = time.monotonic()
    with pytest.raises(TokenRefused, match="AUTHENTICATIONFAILED"):
        await ImapSession.open(endpoint)
    assert time.monotonic() - started < 5
    log = account.protolog.read_text()
    assert "AUTHENTICATE XOAUTH2 ***\n" in log and "C: ***\n" in log
    assert_clean(log, shared_idp)


async def test_listener_turns_mail_into_cases_over_oauth2(
    dovecot_oauth: DovecotSandbox, shared_idp: OAuthTestServer, account: Account, tmp_path: Path
) -> None:
    """The whole intake (login, select, fetch, case, move) with an OAuth2 account."""
    for n in range(3):
        dovecot_oauth.append(account.user, "IMAP/New", make_mail(n))
    dovecot_oauth.create_folder(account.user, "IMAP/Done")
    xml = microsoft_config_xml(dovecot_oauth, shared_idp, account)
    (cfg,) = parse_config(xml.encode(), tmp_path / "el.xml").imap_listeners
    assert cfg.authentication is not None and cfg.authentication.client_secret == SECRET
    endpoint = dataclasses.replace(
        imap_endpoint(dovecot_oauth, account, shared_idp),
        token_provider=provider_for(
            cfg.authentication, cfg.username, cache=account.cache, purpose="imap"
        ),
    )
    output = io.StringIO()
    configure_logging(json=True, level="debug", stream=output)
    store = SqliteStore(tmp_path / "cases.sqlite3")
    await store.open()
    try:
        listener = Listener(
            ListenerSettings(
                id=cfg.id,
                input_folder="IMAP/New",
                output_folder="IMAP/Done",
                sync_max_wait_time=60.0,
                sync_max_changes_count=10,
            ),
            connect=lambda: ImapSession.open(endpoint),
            store=store,
            handler=CaseEngine(store, engine_settings(cfg, None)),
            clock=SystemClock(),
            stop=asyncio.Event(),
            log=get_logger(listener=cfg.id),
        )
        await listener.run_once()
    finally:
        await store.close()
    assert len(db_rows(tmp_path / "cases.sqlite3", "SELECT id FROM cases")) == 3
    assert dovecot_oauth.count(account.user, "IMAP/Done") == 3
    assert_clean(output.getvalue() + account.protolog.read_text(), shared_idp)


# ----- POP3 -------------------------------------------------------------------------------------
async def test_pop3_xoauth2_login_refresh_and_refusal(
    dovecot_oauth: DovecotSandbox, shared_idp: OAuthTestServer, account: Account
) -> None:
    dovecot_oauth.append(account.user, "INBOX", make_mail(1))
    endpoint = pop3_endpoint(dovecot_oauth, account, shared_idp)
    session = await Pop3Session.open(endpoint)
    assert len(await session.list_uidls()) == 1
    await session.quit()
    log = account.protolog.read_text()
    assert "C: AUTH XOAUTH2" in log and "C: ***\n" in log and "S: +OK Logged in." in log

    shared_idp.expire(last_token(shared_idp, account.user))
    session = await Pop3Session.open(endpoint)  # refused, refreshed, reconnected
    assert len(await session.list_uidls()) == 1
    await session.quit()

    shared_idp.deny(account.user)
    started = time.monotonic()
    with pytest.raises(TokenRefused) as caught:
        await Pop3Session.open(endpoint)
    assert time.monotonic() - started < 5
    assert "-ERR [AUTH]" in str(caught.value) and "Set-CASMailbox" in str(caught.value)
    assert_clean(str(caught.value) + account.protolog.read_text(), shared_idp)


# ----- SMTP -------------------------------------------------------------------------------------
def ack(user: str) -> EmailMessage:
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = user, "cliente@example.com", "Caso 1"
    message.set_content("Recibimos su mensaje.")
    return message


async def test_smtp_xoauth2_send_refresh_refusal_and_provider_down(
    shared_idp: OAuthTestServer, account: Account, tmp_path: Path
) -> None:
    provider = account.provider(shared_idp, "smtp")
    (tmp_path / "smtp").mkdir()
    with SmtpTestServer(tmp_path / "smtp", token_validator=shared_idp.valid) as server:
        endpoint = server.endpoint(username=account.user, password=None, token_provider=provider)
        log = ProtocolLog(account.protolog)
        reply = await send_message(endpoint, ack(account.user), protolog=log)
        assert reply.startswith("250") and server.messages[-1].login == account.user

        shared_idp.expire(last_token(shared_idp, account.user))
        await send_message(endpoint, ack(account.user), protolog=log)  # refreshed, retried
        assert len(server.messages) == 2

        shared_idp.deny(account.user)
        with pytest.raises(AuthenticationError) as caught:
            await send_message(endpoint, ack(account.user), protolog=log)
        assert "535" in str(caught.value) and "SendAs" in str(caught.value)
        log.close()

        with shared_idp.down():
            fresh, _ = token_cache(tmp_path / "other")
            other = dataclasses.replace(
                endpoint,
                token_provider=provider_for(
                    ms_auth(
                        shared_idp,
                        fresh.path.parent / "engage-listener.key",
                        client_id=f"app-{account.user}",
                        client_secret=SECRET,
                    ),
                    account.user,
                    cache=fresh,
                    purpose="smtp",
                ),
            )
            with pytest.raises(SmtpTemporaryError):  # retried later by the outbox
                await send_message(other, ack(account.user))
    text = account.protolog.read_text()
    assert "C: AUTH XOAUTH2" in text and "C: ***" in text
    assert_clean(text + str(caught.value) + account.cache.path.read_text(), shared_idp)


async def test_smtp_server_without_xoauth2_is_a_clear_error(
    shared_idp: OAuthTestServer, account: Account, smtp: SmtpTestServer
) -> None:
    server = smtp  # PLAIN and LOGIN only
    endpoint = server.endpoint(
        username=account.user,
        password=None,
        token_provider=account.provider(shared_idp, "smtp"),
    )
    with pytest.raises(AuthenticationError, match="does not offer AUTH XOAUTH2"):
        await send_message(endpoint, ack(account.user))


def test_daemon_and_auth_status_commands_over_oauth2(
    dovecot_oauth: DovecotSandbox, shared_idp: OAuthTestServer, account: Account, tmp_path: Path
) -> None:
    """The wiring operators use: XML in, `run --once` and `auth status` as commands."""
    for n in range(2):
        dovecot_oauth.append(account.user, "IMAP/New", make_mail(n))
    dovecot_oauth.create_folder(account.user, "IMAP/Done")
    config = tmp_path / "el.xml"
    config.write_text(microsoft_config_xml(dovecot_oauth, shared_idp, account))
    env = {**os.environ, "STATE_DIRECTORY": str(tmp_path / "state")}
    run = [sys.executable, "-m", "engage_listener"]
    done = subprocess.run(
        [*run, "run", "--once", "--config", str(config)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert dovecot_oauth.count(account.user, "IMAP/Done") == 2
    status = subprocess.run(
        [*run, "auth", "status", "--json", "--config", str(config)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert status.returncode == 0, status.stderr
    (row,) = json.loads(status.stdout)
    assert row["account"] == account.user and "microsoft" in row["kind"].lower()
    assert_clean(done.stdout + done.stderr + status.stdout, shared_idp)
