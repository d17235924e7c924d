"""No secret leaves the daemon through an error path (issue 14, point 4).

The end-to-end test runs the daemon as operators do, against IMAP servers that
answer the login oddly (tests/hostile_login.py), and then searches the bytes of
everything the daemon and the CLI produced: stdout, stderr, the store and its
WAL, the protocol logs, the token cache, `/metrics` and `status --json`.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest
import structlog

from devkit.dovecot import free_port
from engage_listener.config import secret_refs as engage_secrets
from engage_listener.oauth.provider import login_interactive, provider_for, xoauth2_payload
from engage_listener.observe.logs import (
    _SECRETS,
    configure_logging,
    install_exit_redaction,
    loop_exception_handler,
    register_secret,
    scrub,
)
from tests.support.config_xml import block, block_element, write_config
from tests.support.fixtures import StartHostileLogin
from tests.support.servers.hostile_login import MODES, HostileLoginServer
from tests.support.servers.oauth_server import OAuthTestServer, ms_auth, token_cache

PASSWORD = "Pw-SECRET-7d1f"
CLIENT_SECRET = "client-SECRET-93ab"
USER = "hostile@contoso.test"
APP = "app-hostile"


@pytest.fixture
def forget_secrets() -> Iterator[None]:
    """Registered secrets are process-wide; keep other tests' logs as they were."""
    before = set(_SECRETS)
    yield
    _SECRETS.intersection_update(before)


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def xoauth2(user: str, token: str) -> str:
    return base64.b64encode(f"user={user}\x01auth=Bearer {token}\x01\x01".encode()).decode()


def hostile_listener(
    lid: str, server: HostileLoginServer, protolog: Path, secret: str, idp: OAuthTestServer
) -> str:
    """A listener of `server`: a password one, or (secret: an enc: value) an OAuth2 one."""
    login = {} if secret else {"Password": "env:EL_HOSTILE_PASSWORD"}
    values = {
        "HostName": server.host,
        "Port": str(server.port),
        "UseSsl": "True",
        "CaFile": str(server.ca_file),
        "UserName": USER,
        **login,
        "InputFolder": "INBOX",
        "OutputFolder": "Done",
        "ProtocolLogFile": str(protolog),
    }
    oauth = {
        "Type": "Microsoft",
        "TenantId": "tenant-a",
        "ClientId": APP,
        "ClientSecret": secret,
        "Authority": idp.authority,
        "CaFile": str(idp.ca_file),
    }
    return block(
        "ImapListener", lid, values, block_element("Authentication", oauth) if secret else ""
    )


def hostile_config(
    path: Path,
    servers: Mapping[str, HostileLoginServer],
    idp: OAuthTestServer,
    key: Path,
    port: int,
) -> None:
    enc = engage_secrets.encrypt(CLIENT_SECRET, engage_secrets.load_key(key))
    protolog = path.parent / "proto-%listener%.log"
    blocks = [hostile_listener(f"P-{m}", s, protolog, "", idp) for m, s in servers.items()]
    blocks += [hostile_listener(f"O-{m}", s, protolog, enc, idp) for m, s in servers.items()]
    metrics = f'Listen="127.0.0.1:{port}" HealthMaxAge="600"'
    write_config(path, *blocks, key_file=key, metrics=metrics)


def status_rows(config: Path, env: dict[str, str]) -> list[dict[str, object]]:
    done = subprocess.run(
        [sys.executable, "-m", "engage_listener", "status", "--json", "--config", str(config)],
        capture_output=True,
        env=env,
        timeout=60,
        check=True,
    )
    rows: list[dict[str, object]] = json.loads(done.stdout)
    return rows


def files_under(directory: Path, skip: set[Path]) -> dict[str, bytes]:
    """Every file the daemon may have written (the store, its WAL, protocol logs, ...)."""
    return {
        str(p): p.read_bytes()
        for p in directory.rglob("*")
        if p.is_file() and not any(p.is_relative_to(s) for s in skip)
    }


def assert_nowhere(haystacks: dict[str, bytes], secrets: list[str]) -> None:
    leaks = [
        f"{name} holds {secret[:6]}..."
        for name, data in haystacks.items()
        for secret in secrets
        if secret.encode() in data
    ]
    assert not leaks, leaks


def test_no_password_or_token_escapes_when_login_servers_misbehave(
    hostile_login: StartHostileLogin, idp: OAuthTestServer, tmp_path: Path
) -> None:
    idp.add_ms_app("tenant-a", APP, secret=CLIENT_SECRET, mailbox=USER)
    state, run_dir = tmp_path / "state", tmp_path / "run"
    run_dir.mkdir()
    _, key = token_cache(state)
    port = free_port()
    env = {**os.environ, "STATE_DIRECTORY": str(state), "EL_HOSTILE_PASSWORD": PASSWORD}
    servers = {mode: hostile_login(tmp_path / f"srv-{mode}", mode) for mode in MODES}
    config = run_dir / "el.xml"
    hostile_config(config, servers, idp, key, port)
    out, err = run_dir / "daemon.out", run_dir / "daemon.err"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        daemon = subprocess.Popen(
            [sys.executable, "-m", "engage_listener", "run", "--config", str(config)],
            stdout=stdout,
            stderr=stderr,
            env=env,
        )
    try:
        wait_until(lambda: all(s.logins >= 2 for s in servers.values()), 60, "every login attempt")
        wait_until(
            lambda: all(r["last_error"] for r in status_rows(config, env)),
            30,
            "every listener's last error in the store",
        )
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
        shown = subprocess.run(
            [sys.executable, "-m", "engage_listener", "status", "--config", str(config)],
            capture_output=True,
            env=env,
            timeout=60,
            check=True,
        ).stdout
        rows = status_rows(config, env)
        running = files_under(run_dir, set())  # the WAL before shutdown checkpoints it
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(20)
        except subprocess.TimeoutExpired:
            daemon.kill()
    received = {mode: bytes(s.received) for mode, s in servers.items()}
    tokens = [t for t in idp.issued if t.startswith("at-")]
    # The test means something: the password and a token really went to the servers.
    assert all(PASSWORD.encode() in data for data in received.values())
    assert tokens and any(xoauth2(USER, t).encode() in received["wrong-tag"] for t in tokens)
    assert len(rows) == len(MODES) * 2 and all(r["last_error"] for r in rows)
    haystacks = {
        **{f"running:{k}": v for k, v in running.items()},
        **files_under(run_dir, set()),
        **files_under(state, set()),
        "/metrics": metrics,
        "status": shown,
        "status --json": json.dumps(rows).encode(),
    }
    assert str(out) in haystacks and str(err) in haystacks
    assert any(name.endswith("store.sqlite3") for name in haystacks)
    assert any("proto-P-wrong-tag" in name for name in haystacks)
    forms = [PASSWORD, CLIENT_SECRET, *idp.issued, *(xoauth2(USER, t) for t in tokens)]
    assert_nowhere(haystacks, forms)


# ----- the pieces, in-process ---------------------------------------------------------------
def test_quoted_and_encoded_forms_of_a_secret_are_scrubbed(forget_secrets: None) -> None:
    register_secret('pa"ss\\wörd')
    for text in (
        'A1 LOGIN "user" "pa\\"ss\\\\wörd"',  # IMAP quoted string
        repr('pa"ss\\wörd'),
        repr('pa"ss\\wörd'.encode()),
        json.dumps({"p": 'pa"ss\\wörd'}),
        json.dumps({"p": 'pa"ss\\wörd'}, ensure_ascii=False),
    ):
        cleaned = scrub(text)
        assert "ss" not in cleaned.replace("***", ""), (text, cleaned)


def test_stdlib_logging_loop_handler_and_uncaught_exceptions_are_scrubbed(
    forget_secrets: None, capsys: pytest.CaptureFixture[str]
) -> None:
    secret = "stdlib-SECRET-55e0"
    register_secret(secret)
    install_exit_redaction()
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger = logging.getLogger("aioimaplib.test")
    logger.addHandler(handler)
    try:
        try:
            raise RuntimeError(f'unexpected tagged response (A1 LOGIN "u" "{secret}")')
        except RuntimeError:
            logger.error("Sending : %s", f"LOGIN u {secret}", exc_info=True)
    finally:
        logger.removeHandler(handler)
    assert "unexpected tagged response" in stream.getvalue() and secret not in stream.getvalue()

    out = io.StringIO()
    configure_logging(json=True, stream=out)
    try:
        loop = asyncio.new_event_loop()
        try:
            exc = RuntimeError(f"pending command LOGIN {secret}")
            loop_exception_handler(loop, {"message": "Fatal error", "exception": exc, "x": exc})
        finally:
            loop.close()
        sys.excepthook(RuntimeError, RuntimeError(secret), None)
    finally:
        structlog.reset_defaults()
    assert "loop_exception" in out.getvalue() and secret not in out.getvalue()
    assert secret not in capsys.readouterr().err


async def test_every_token_the_identity_provider_returns_is_registered_at_once(
    idp: OAuthTestServer, tmp_path: Path, forget_secrets: None
) -> None:
    tokens, key_file = token_cache(tmp_path / "state")
    idp.add_ms_app("tenant-a", "public-1")
    idp.device_user, idp.device_pending = USER, 0
    auth = ms_auth(idp, key_file, client_id="public-1")
    await login_interactive(
        auth,
        USER,
        tokens,
        out=io.StringIO(),
        inp=io.StringIO(),
        purpose="imap",
        device_code=True,
    )
    idp.rotate_refresh_tokens = True
    token = await provider_for(auth, USER, cache=tokens, purpose="imap").token(force_refresh=True)
    issued = idp.issued
    assert any(t.startswith("rt-") for t in issued) and token in issued
    payload = xoauth2_payload(USER, token)  # what AUTHENTICATE sends: registered as made
    assert payload == xoauth2(USER, token)
    for secret in [*issued, payload]:
        assert scrub(f"error: {secret}") == "error: ***", secret[:6]
