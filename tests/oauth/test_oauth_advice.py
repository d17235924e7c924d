"""Identity-provider errors in plain words where operators look: `test-connection`, the log.

Against the real test identity provider and Dovecot's oauth2 passdb (the fixtures of
test_oauth_mail): an app-only Microsoft listener whose client secret the provider
reports expired (AADSTS7000222), and one whose provider is down. `test-connection`
must fail the login step with the advice of `oauth_advice` and a hint about the
identity provider, never about the mail server; the daemon's `listener_error` must
carry the same advice, as a permanent error, without a traceback or a secret.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from devkit.dovecot import DovecotSandbox
from engage_listener.intake.retry import backoff
from engage_listener.oauth.advice import microsoft_advice
from engage_listener.oauth.provider import OAuthError, provider_for
from engage_listener.ops import diagnose, diagnose_steps
from engage_listener.sources.imap.text import ImapEndpoint
from tests.support.daemon import events, wait_for
from tests.support.helpers import listener_config, make_mail
from tests.support.oauth import SECRET, Account, assert_clean, microsoft_config_xml
from tests.support.servers.oauth_server import OAuthTestServer, ms_auth
from tests.support.servers.smtp_server import SmtpTestServer

EXPIRED_ADVICE = microsoft_advice(["7000222"])  # whatever oauth_advice says about it
# What test-connection says when the mail server is to blame: wrong here.
MAIL_SERVER_HINTS = ("the server closed or stalled", "the OAuth2 token was refused", "Port")


def expired_secret_app(shared_idp: OAuthTestServer, account: Account) -> str:
    """A second registration for the mailbox whose client secret has expired."""
    client_id = f"expired-{account.user}"
    shared_idp.add_ms_app(
        "tenant-a", client_id, secret=SECRET, secret_expired=True, mailbox=account.user
    )
    return client_id


def write_config(
    path: Path,
    dovecot: DovecotSandbox,
    shared_idp: OAuthTestServer,
    account: Account,
    client_id: str,
) -> Path:
    path.write_text(microsoft_config_xml(dovecot, shared_idp, account, client_id))
    return path


def command(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "STATE_DIRECTORY": str(tmp_path / "state")}
    return subprocess.run(
        [sys.executable, "-m", "engage_listener", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def run_test_connection(tmp_path: Path, config: Path) -> tuple[str, dict[str, Any], str]:
    """`test-connection` as text and as JSON: (text, the login step, every output)."""
    text = command(tmp_path, "test-connection", "--config", str(config))
    as_json = command(tmp_path, "test-connection", "--json", "--config", str(config))
    assert text.returncode == 1 and as_json.returncode == 1, text.stdout + text.stderr
    document = json.loads(as_json.stdout)
    assert document["result"] == "FAILED" and document["failed"] == 1
    steps = [(s["name"], s["ok"]) for s in document["steps"]]
    assert steps == [("dns", True), ("tcp", True), ("tls", True), ("login", False)]
    login = document["steps"][-1]
    assert login["listener"] == "O365" and login["account"] == "imap"
    (line,) = [ln for ln in text.stdout.splitlines() if ln.split()[2:4] == ["login", "FAILED"]]
    assert line.endswith(f"{login['detail']} — hint: {login['hint']}")
    assert text.stdout.rstrip().endswith("Test result: FAILED (1 of 4 steps)")
    everything = text.stdout + text.stderr + as_json.stdout + as_json.stderr
    assert "Traceback" not in everything
    return text.stdout, login, everything


def test_expired_client_secret_in_test_connection(
    dovecot_oauth: DovecotSandbox, shared_idp: OAuthTestServer, account: Account, tmp_path: Path
) -> None:
    client_id = expired_secret_app(shared_idp, account)
    config = write_config(tmp_path / "el.xml", dovecot_oauth, shared_idp, account, client_id)
    text, login, everything = run_test_connection(tmp_path, config)
    assert login["hint"] == EXPIRED_ADVICE  # the fix, in Entra ID, not on the mail server
    assert "create a new one in Entra ID" in login["hint"]
    assert not any(words in login["hint"] for words in MAIL_SERVER_HINTS)
    detail = login["detail"]
    assert detail.startswith(
        f"the identity provider at {shared_idp.authority}/tenant-a issued no token"
    )
    assert "AADSTS7000222" in detail and "client secret keys for app are expired" in detail
    assert EXPIRED_ADVICE not in detail  # said once, as the hint
    assert f"hint: {EXPIRED_ADVICE}" in text
    assert_clean(everything, shared_idp)
    with shared_idp.lock:  # no token was issued, so the mail server was never asked
        assert all(owner != account.user for owner, _ in shared_idp.state.access.values())


def test_identity_provider_down_in_test_connection(
    dovecot_oauth: DovecotSandbox, shared_idp: OAuthTestServer, account: Account, tmp_path: Path
) -> None:
    config = write_config(
        tmp_path / "el.xml", dovecot_oauth, shared_idp, account, f"app-{account.user}"
    )
    with shared_idp.down():
        text, login, everything = run_test_connection(tmp_path, config)
    assert login["detail"] == (
        f"the identity provider at {shared_idp.authority}/tenant-a could not be reached: "
        "the connection was refused"
    )
    hint = login["hint"]
    assert "check Authority and TenantId" in hint and "outbound HTTPS" in hint
    assert hint.endswith("no token was sent to the mail server")
    assert not any(words in hint for words in MAIL_SERVER_HINTS)
    assert "0x" not in text  # no object addresses from the HTTP library
    assert_clean(everything, shared_idp)


@pytest.mark.parametrize("trouble", ["down", "untrusted"])
async def test_identity_provider_trouble_on_imap_and_smtp_logins(
    dovecot_oauth: DovecotSandbox,
    shared_idp: OAuthTestServer,
    account: Account,
    tmp_path: Path,
    trouble: str,
) -> None:
    """SMTP turns an unreachable provider into a temporary SMTP error: still reported right."""
    ca_file = dovecot_oauth.ca_file if trouble == "untrusted" else shared_idp.ca_file
    auth = ms_auth(
        shared_idp, account.key_file, client_id=f"app-{account.user}", client_secret=SECRET,
        ca_file=ca_file,
    )  # fmt: skip
    (tmp_path / "smtp").mkdir()
    with SmtpTestServer(tmp_path / "smtp", token_validator=shared_idp.valid) as server:
        smtp = server.endpoint(
            username=account.user,
            password=None,
            token_provider=provider_for(auth, account.user, cache=account.cache, purpose="smtp"),
        )
        imap = ImapEndpoint(
            host=dovecot_oauth.host,
            port=dovecot_oauth.imap_port,
            use_ssl=False,
            username=account.user,
            password="",
            ca_file=str(dovecot_oauth.ca_file),
            timeout=10.0,
            token_provider=provider_for(auth, account.user, cache=account.cache, purpose="imap"),
        )
        cfg = listener_config(dovecot_oauth, account.user)
        if trouble == "down":
            with shared_idp.down():
                steps = await diagnose.test_listener(
                    cfg, imap_endpoint=imap, pop3_endpoint=None, smtp_endpoint=smtp
                )
        else:
            steps = await diagnose.test_listener(
                cfg, imap_endpoint=imap, pop3_endpoint=None, smtp_endpoint=smtp
            )
    report = diagnose_steps.render_text(steps)
    for name in ("imap", "smtp"):
        done = [(s.name, s.ok) for s in steps if s.account == name]
        assert done == [("dns", True), ("tcp", True), ("tls", True), ("login", False)], report
        (login,) = [s for s in steps if s.account == name and s.name == "login"]
        where = f"the identity provider at {shared_idp.authority}/tenant-a could not be reached: "
        if trouble == "down":
            assert login.detail == where + "the connection was refused", report
            assert "outbound HTTPS" in login.hint
        else:
            assert login.detail == where + "its TLS certificate is not trusted", report
            assert "set CaFile in Authentication" in login.hint
        assert not any(words in login.hint for words in MAIL_SERVER_HINTS)
    assert server.messages == []
    assert_clean(report + diagnose_steps.render_json(steps), shared_idp)


def test_daemon_logs_the_advice_as_a_permanent_error(
    dovecot_oauth: DovecotSandbox, shared_idp: OAuthTestServer, account: Account, tmp_path: Path
) -> None:
    client_id = expired_secret_app(shared_idp, account)
    dovecot_oauth.append(account.user, "IMAP/New", make_mail(1))
    config = write_config(tmp_path / "el.xml", dovecot_oauth, shared_idp, account, client_id)

    once = command(tmp_path, "run", "--once", "--config", str(config))
    assert once.returncode == 1, once.stdout + once.stderr
    logged = [json.loads(ln) for ln in once.stdout.splitlines() if ln.startswith("{")]
    (error,) = [e for e in logged if e["event"] == "listener_error"]
    assert error["listener"] == "O365" and error["error_type"] == "OAuthError"
    assert error["kind"] == "permanent"  # the same words as the daemon's
    assert error["error"].endswith(EXPIRED_ADVICE) and "AADSTS7000222" in error["error"]
    assert ".." not in error["error"]
    assert "exception" not in error and "Traceback" not in once.stdout + once.stderr
    assert_clean(once.stdout + once.stderr, shared_idp)
    assert dovecot_oauth.count(account.user, "IMAP/New") == 1  # nothing touched

    # `run --once` logs no kind; the daemon proper classifies the error as permanent
    # (an operator must act, retried slowly), the way `backoff` does.
    assert backoff(OAuthError("x", EXPIRED_ADVICE, "AADSTS7000222"), 1)[1] == "permanent"
    log = tmp_path / "daemon.log"
    env = {**os.environ, "STATE_DIRECTORY": str(tmp_path / "state")}
    with log.open("ab") as out:
        daemon = subprocess.Popen(
            [sys.executable, "-m", "engage_listener", "run", "--config", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:
        wait_for(
            lambda: any(e.get("event") == "listener_error" for e in events(log)),
            what="listener_error from the daemon",
        )
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=30)
    (error,) = [e for e in events(log) if e["event"] == "listener_error"]
    assert error["kind"] == "permanent" and error["retry_in"] == 300.0
    assert str(error["error"]).endswith(EXPIRED_ADVICE) and error["error_type"] == "OAuthError"
    assert "exception" not in error and "Traceback" not in log.read_text()
    assert_clean(log.read_text(), shared_idp)
