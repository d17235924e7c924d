"""Hostile IMAP servers (issue 14, points 1 and 2): no TLS downgrade, every read bounded.

Loopback servers (`tests/hostile_imap.py`) record every byte they receive: without
STARTTLS no password and no token ever arrives, unless AllowPlaintextLogin. Servers that
stream an endless literal, trickle a byte at a time or send a line without end are cut
off within their deadline, the listener reconnects, memory stays put, and a listener on
another server goes on taking mail. A mail over MaxMessageSize on the real Dovecot is
quarantined with only its header read.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from devkit.dovecot import DovecotSandbox
from engage_listener.oauth.provider import TokenProvider, provider_for
from engage_listener.ops import diagnose, diagnose_steps
from engage_listener.ops.admin import get_quarantine, list_quarantine
from tests.support.fakes import FakeClock
from tests.support.faults import errors
from tests.support.fixtures import StartHostileImap
from tests.support.helpers import Harness, db_rows, eventually, listener_config, make_mail
from tests.support.servers.hostile_imap import (
    PASSWORD,
    Behaviour,
    endpoint,
    hostile_config,
    peak_rss,
    running_listener,
    short_fetch,
)
from tests.support.servers.oauth_server import OAuthTestServer, ms_auth, token_cache

NO_STARTTLS = "server offered no STARTTLS; refusing to send credentials in clear"
SECRET = "hostile-app-secret-0123456789"
MB = 1024 * 1024
Outcome = tuple[list[Any], float, int]


def oauth_provider(shared_idp: OAuthTestServer, directory: Path, user: str) -> TokenProvider:
    """A real Microsoft token provider for `user`, against the test identity provider."""
    shared_idp.add_ms_app("tenant-a", f"app-{user}", secret=SECRET, mailbox=user)
    cache, key_file = token_cache(directory)
    auth = ms_auth(shared_idp, key_file, client_id=f"app-{user}", client_secret=SECRET)
    return provider_for(auth, user, cache=cache, purpose="imap")


# ----- 1. no silent TLS downgrade ---------------------------------------------------------
@pytest.mark.parametrize("starttls", ["absent", "refused"])
async def test_without_starttls_the_password_is_never_sent(
    hostile_imap: StartHostileImap, tmp_path: Path, starttls: str
) -> None:
    server = await hostile_imap(Behaviour(starttls=starttls))
    cfg = hostile_config(server.port)
    with capture_logs() as logs:
        async with running_listener(cfg, tmp_path / "s.sqlite3") as listener:
            await eventually(lambda: listener.state == "failing", what="permanent error")
    assert PASSWORD.encode() not in server.received
    assert b"LOGIN" not in server.received.upper()
    (error,) = errors(logs)
    assert error["kind"] == "permanent" and error["error_type"] == "TlsError"
    assert "refusing to send credentials in clear" in error["error"]
    if starttls == "absent":
        assert NO_STARTTLS in error["error"] and NO_STARTTLS in (listener.last_error or "")


async def test_without_starttls_no_token_is_even_requested(
    hostile_imap: StartHostileImap, shared_idp: OAuthTestServer, tmp_path: Path
) -> None:
    user = f"nostarttls-{time.monotonic_ns()}@contoso.test"
    provider = oauth_provider(shared_idp, tmp_path / "state", user)
    grants = shared_idp.grants("client_credentials")
    server = await hostile_imap()
    cfg = hostile_config(server.port, username=user)
    ep = endpoint(cfg, token_provider=provider, password="")
    async with running_listener(cfg, tmp_path / "s.sqlite3", ep) as listener:
        await eventually(lambda: listener.state == "failing", what="permanent error")
    assert NO_STARTTLS in (listener.last_error or "")
    assert b"AUTHENTICATE" not in server.received.upper()
    assert shared_idp.grants("client_credentials") == grants  # no token was ever fetched
    for token in shared_idp.issued:
        assert token.encode() not in server.received


async def test_allow_plaintext_login_logs_in_in_clear_and_warns(
    hostile_imap: StartHostileImap, tmp_path: Path
) -> None:
    server = await hostile_imap()
    cfg = hostile_config(server.port, allow_plaintext_login=True)
    with capture_logs() as logs:
        async with running_listener(cfg, tmp_path / "s.sqlite3") as listener:
            await eventually(lambda: listener.batches >= 1, what="a batch in clear")
    assert PASSWORD.encode() in server.received  # in clear, as explicitly allowed
    warned = [e for e in logs if e["event"] == "imap_plaintext_login"]
    assert warned and warned[0]["log_level"] == "warning"
    assert db_rows(tmp_path / "s.sqlite3", "SELECT count(*) FROM cases") == [(1,)]


async def test_test_connection_reports_the_refusal_and_sends_nothing(
    hostile_imap: StartHostileImap, tmp_path: Path
) -> None:
    server = await hostile_imap()
    cfg = hostile_config(server.port)
    steps = await diagnose.test_listener(
        cfg, imap_endpoint=endpoint(cfg), pop3_endpoint=None, smtp_endpoint=None
    )
    tls = {s.name: s for s in steps}["tls"]
    assert not tls.ok and NO_STARTTLS in tls.detail
    assert "AllowPlaintextLogin" in tls.hint
    assert [s.name for s in steps] == ["dns", "tcp", "tls"]
    assert b"LOGIN" not in server.received.upper()
    assert PASSWORD not in diagnose_steps.render_text(steps)


# ----- 2. every read bounded --------------------------------------------------------------
async def _cut_off(
    hostile_imap: StartHostileImap, tmp_path: Path, body: str, within: float
) -> Outcome:
    """Run a listener against a server misbehaving on FETCH; returns the listener errors,
    seconds until the first, and the peak growth of resident memory."""
    server = await hostile_imap(Behaviour(body=body))
    cfg = hostile_config(server.port, allow_plaintext_login=True)
    ep = endpoint(cfg, limits=short_fetch(), timeout=5.0)
    with capture_logs() as logs:
        async with peak_rss() as rss, running_listener(cfg, tmp_path / "s.sqlite3", ep) as li:
            started = time.monotonic()
            await eventually(lambda: li.last_error is not None, timeout=within + 5)
            took = time.monotonic() - started
            await eventually(lambda: server.connections >= 2, what="a reconnect")
    found = errors(logs)
    assert found and all(e["kind"] == "transient" for e in found), found
    assert found[0]["error_type"] in ("ProtocolError", "ConnectionLostError"), found
    assert PASSWORD not in str(found)
    return found, took, rss[1] - rss[0]


async def test_an_endless_literal_is_refused_when_announced(
    hostile_imap: StartHostileImap, dovecot: DovecotSandbox, mailbox_user: str, tmp_path: Path
) -> None:
    """The other listener, on a sane server, takes its mail meanwhile."""
    dovecot.create_folder(mailbox_user, "IMAP/Done")
    dovecot.append(mailbox_user, "IMAP/New", make_mail(1))
    sane = listener_config(dovecot, mailbox_user, id="Sane")
    async with running_listener(sane, tmp_path / "sane.sqlite3"):
        found, took, grew = await _cut_off(hostile_imap, tmp_path, "endless-literal", within=1.0)
        await eventually(lambda: dovecot.count(mailbox_user, "IMAP/Done") == 1)
    assert "literal of 10000000000 bytes" in found[0]["error"]
    assert took < 1.0 and grew < 100 * MB, (took, grew)


async def test_a_trickling_fetch_hits_its_overall_deadline(
    hostile_imap: StartHostileImap, tmp_path: Path
) -> None:
    """One byte every 0.25 s keeps a 5 s inactivity timer happy for ever; the overall
    deadline (1 s allowance + the size at 64 KB/s) ends it."""
    found, took, grew = await _cut_off(hostile_imap, tmp_path, "trickle", within=1.1)
    assert "UID FETCH timed out after 1 s" in found[0]["error"]
    assert took < 2.5 and grew < 100 * MB, (took, grew)


async def test_a_line_without_end_is_cut_at_the_line_cap(
    hostile_imap: StartHostileImap, tmp_path: Path
) -> None:
    found, took, grew = await _cut_off(hostile_imap, tmp_path, "endless-line", within=1.0)
    assert "a line of over 1048576 bytes" in found[0]["error"]
    assert took < 1.5 and grew < 100 * MB, (took, grew)


async def test_an_oversize_mail_is_quarantined_with_its_header_only(
    dovecot: DovecotSandbox, mailbox_user: str, tmp_path: Path
) -> None:
    user, db = mailbox_user, tmp_path / "store.sqlite3"
    big = make_mail(2, subject="Enorme", body="UNREAD-BODY " * 400)
    small = [make_mail(1), make_mail(3)]
    dovecot.create_folder(user, "IMAP/Done")
    dovecot.append_many(user, "IMAP/New", [small[0], big, small[1]])
    cfg = listener_config(dovecot, user, max_message_size=2000)
    async with Harness(cfg, db, FakeClock()) as h:
        assert h.listener is not None
        result = await h.listener.run_once()
        (entry,) = await list_quarantine(h.store)
        found = await get_quarantine(h.store, entry.id)
    assert result.quarantined == 1 and result.ingested == 2
    assert entry.reason == f"oversize: {len(big)} bytes > MaxMessageSize 2000"
    assert found is not None
    raw = found[1]
    assert b"Subject: Enorme" in raw and b"UNREAD-BODY" not in raw
    assert raw == big.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n"
    assert dovecot.count(user, "IMAP/Error") == 1
    assert dovecot.count(user, "IMAP/Done") == 2 and dovecot.count(user, "IMAP/New") == 0
    assert db_rows(db, "SELECT count(*) FROM cases") == [(2,)]
    assert db_rows(db, "SELECT state FROM ledger ORDER BY CAST(item AS INTEGER)") == [
        ("moved",),
        ("quarantined",),
        ("moved",),
    ]


async def test_a_mail_over_the_cap_the_server_underreports_is_refused_unread(
    hostile_imap: StartHostileImap,
    tmp_path: Path,
) -> None:
    """RFC822.SIZE says small, the literal says 10 GB: the literal cap still holds."""
    server = await hostile_imap(Behaviour(body="endless-literal"))
    cfg = hostile_config(server.port, allow_plaintext_login=True, max_message_size=1000)
    ep = endpoint(cfg)
    async with running_listener(cfg, tmp_path / "s.sqlite3", ep) as listener:
        await eventually(lambda: listener.last_error is not None)
    assert "over 16778216" in (listener.last_error or "")
    assert server.streamed < 64 * MB


async def test_mail_announced_with_a_search_answer_starts_the_next_batch(
    hostile_imap: StartHostileImap, tmp_path: Path
) -> None:
    """Dovecot answers the after-batch SEARCH with the mails it had, and announces a mail
    that arrived meanwhile with an EXISTS in the same answer, never again: that EXISTS is
    a change (it was once read as UID 1, and the mail waited for the next one)."""
    behaviour = Behaviour(search_all=b"* SEARCH\r\n* 1 EXISTS\r\n")
    server = await hostile_imap(behaviour)
    cfg = hostile_config(server.port, allow_plaintext_login=True, sync_max_changes_count=1)
    async with running_listener(cfg, tmp_path / "s.sqlite3") as listener:
        await eventually(lambda: listener.batches >= 2, timeout=5, what="a second batch")
