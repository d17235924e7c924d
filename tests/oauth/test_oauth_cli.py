"""`engage-listener auth login` as operators run it: a subprocess, the XML file, the local
identity provider, the terminal (stdout for what to do, stdin for a pasted address).

Microsoft and Google sign in by default with a printed address and a pasted one (the
authorization code flow with PKCE): the test plays the browser with the identity provider's
`consent`. The Microsoft device code flow (`--device-code`) is driven for real too: the
command prints the verification URL and code and keeps polling the identity provider, which
answers
"authorization_pending" until the test approves the sign-in (what the user's browser would
do), then the command stores the tokens and exits 0.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from engage_listener.config import secret_refs as engage_secrets
from engage_listener.config.load import load_config
from engage_listener.oauth.provider import provider_for
from engage_listener.oauth.token_cache import TokenCache
from tests.support.config_xml import block, block_element, write_config
from tests.support.servers.oauth_server import DEVICE_GRANT, OAuthTestServer, token_cache

USER = "soporte@contoso.test"
GMAIL = "soporte@gmail.test"
GOOGLE_CLIENT, GOOGLE_SECRET = "client-1.apps.googleusercontent.com", "google-client-secret-1"
CODE_LINE = re.compile(r"open the page (\S+) and enter the code ([0-9A-F]{8})\b")


@pytest.fixture
def state(tmp_path: Path) -> Path:
    """The state directory (STATE_DIRECTORY): key file and token cache, as keygen makes it."""
    token_cache(tmp_path / "state")
    return tmp_path / "state"


def microsoft_block(idp: OAuthTestServer) -> str:
    return block_element(
        "Authentication",
        {
            "Type": "Microsoft",
            "TenantId": "tenant-a",
            "ClientId": "public-1",
            "Authority": idp.authority,
            "CaFile": str(idp.ca_file),
        },
    )


def google_block(idp: OAuthTestServer) -> str:
    return block_element(
        "Authentication",
        {
            "Type": "Google",
            "ClientId": GOOGLE_CLIENT,
            "ClientSecret": GOOGLE_SECRET,
            "TokenUri": idp.google_token_uri,
            "CaFile": str(idp.ca_file),
        },
    )


def oauth_config(tmp_path: Path, state: Path, user: str, auth: str) -> Path:
    """One OAuth2 listener ("Cloud") and one with a password ("Plain")."""
    cloud = block("ImapListener", "Cloud", {"HostName": "127.0.0.1", "UserName": user}, auth)
    plain = {"HostName": "127.0.0.1", "UserName": "plain", "Password": "pw-123"}
    path = write_config(
        tmp_path / "el.xml",
        cloud,
        block("ImapListener", "Plain", plain),
        process=None,
        key_file=state / "engage-listener.key",
    )
    load_config(path)  # a valid file, or the test is wrong
    return path


def env(state: Path) -> dict[str, str]:
    return {**os.environ, "STATE_DIRECTORY": str(state), "PYTHONUNBUFFERED": "1"}


def cli(state: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "engage_listener", *args],
        input=stdin,
        env=env(state),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


class Terminal:
    """`auth login` running as a subprocess; stdout is collected line by line."""

    def __init__(self, state: Path, config: Path, listener: str = "Cloud", *options: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "engage_listener", "auth", "login", listener,
             "--config", str(config), *options],
            env=env(state), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_for(self, check: Callable[[], bool], what: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            if self.proc.poll() is not None and not self._reader.is_alive() and not check():
                raise AssertionError(f"auth login ended ({self.proc.returncode}) before {what}:"
                                     f"\n{self.output}{self.stderr()}")  # fmt: skip
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}:\n{self.output}")
            time.sleep(0.05)

    def paste(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()

    def finish(self, timeout: float = 30) -> int:
        code = self.proc.wait(timeout)
        self._reader.join(5)
        return code

    def stderr(self) -> str:
        return self.proc.stderr.read() if self.proc.stderr and self.proc.poll() is not None else ""

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


def approve_device_sign_in(idp: OAuthTestServer) -> int:
    """The user entered the code and consented: the next poll gets the tokens."""
    with idp.lock:
        for device in idp.state.devices.values():
            device.pending = 0
        return len(idp.state.devices)


def abandon_device_sign_in(idp: OAuthTestServer) -> None:
    """The code was never entered: the identity provider forgets it (expired_token)."""
    with idp.lock:
        idp.state.devices.clear()


def status_rows(state: Path, config: Path) -> list[dict[str, str]]:
    done = cli(state, "auth", "status", "--json", "--config", str(config))
    assert done.returncode == 0, done.stderr
    rows: list[dict[str, str]] = json.loads(done.stdout)
    return rows


def no_secrets(text: str, idp: OAuthTestServer) -> None:
    for secret in idp.issued:
        assert secret not in text


# ----- Microsoft device code -------------------------------------------------------------------
def test_device_code_login_shows_url_and_code_waits_for_approval_then_status_is_signed_in(
    idp: OAuthTestServer, state: Path, tmp_path: Path
) -> None:
    idp.add_ms_app("tenant-a", "public-1")
    idp.device_user, idp.device_pending = USER, 10_000  # pending until the test approves
    config = oauth_config(tmp_path, state, USER, microsoft_block(idp))
    (before,) = status_rows(state, config)
    assert before["account"] == USER
    assert before["state"].startswith("not signed in")
    assert before["kind"] == "Microsoft delegated (sign-in by pasted address or device code)"

    terminal = Terminal(state, config, "Cloud", "--device-code")
    try:
        terminal.wait_for(lambda: CODE_LINE.search(terminal.output) is not None, "the code")
        url, code = CODE_LINE.search(terminal.output).groups()  # type: ignore[union-attr]
        assert url == f"{idp.authority}/devicelogin"
        assert f"Cloud IMAP: signing in as {USER}" in terminal.output
        assert f"Sign in as {USER}" in terminal.output
        # It keeps polling and does not finish while the user has not approved.
        terminal.wait_for(lambda: idp.grants(DEVICE_GRANT) >= 2, "two pending polls")
        assert terminal.proc.poll() is None, terminal.output
        (waiting,) = status_rows(state, config)
        assert waiting["state"].startswith("not signed in")
        assert approve_device_sign_in(idp) == 1
        assert terminal.finish() == 0, terminal.output + terminal.stderr()
    finally:
        terminal.kill()
    out = terminal.output
    assert f"Signed in as {USER}; the tokens are stored encrypted." in out
    assert out.rstrip().endswith("Cloud IMAP: signed in")
    assert code in out and out.count(code) == 1
    scope = next(f["scope"] for p, f in idp.state.requests if p.endswith("/devicecode"))
    assert "https://outlook.office.com/IMAP.AccessAsUser.All" in scope
    no_secrets(out, idp)

    text = cli(state, "auth", "status", "--config", str(config))
    assert text.returncode == 0, text.stderr
    assert f"account={USER}" in text.stdout and "state=signed in" in text.stdout
    assert "1 OAuth2 account(s)" in text.stdout
    (row,) = status_rows(state, config)
    assert (row["account"], row["state"]) == (USER, "signed in")
    assert row["signed_in"] != "-" and row["expires"] != "-"
    no_secrets(text.stdout + (state / "oauth-tokens.json").read_text(), idp)

    # What the command stored is what the daemon uses: a token without a new sign-in.
    (cfg, _) = load_config(config).imap_listeners
    assert cfg.authentication is not None
    key = engage_secrets.load_key(state / "engage-listener.key")
    cache = TokenCache(state / "oauth-tokens.json", key)
    imap = provider_for(cfg.authentication, USER, cache=cache, purpose="imap")
    token = asyncio.run(imap.token(force_refresh=True))
    assert idp.valid(USER, token)
    assert idp.grants(DEVICE_GRANT) >= 3 and idp.grants("refresh_token") == 1


def test_device_code_never_approved_fails_with_advice(
    idp: OAuthTestServer, state: Path, tmp_path: Path
) -> None:
    idp.add_ms_app("tenant-a", "public-1")
    idp.device_user, idp.device_pending = USER, 10_000
    config = oauth_config(tmp_path, state, USER, microsoft_block(idp))
    terminal = Terminal(state, config, "Cloud", "--device-code")
    try:
        terminal.wait_for(lambda: CODE_LINE.search(terminal.output) is not None, "the code")
        abandon_device_sign_in(idp)
        assert terminal.finish() == 1
    finally:
        terminal.kill()
    assert "not finished in time" in terminal.output and "auth login" in terminal.output
    assert "Cloud IMAP: signed in" not in terminal.output
    (row,) = status_rows(state, config)
    assert row["state"] != "signed in"


# ----- what auth login refuses ------------------------------------------------------------------
def test_auth_login_on_a_listener_without_oauth2_is_a_clear_error(
    idp: OAuthTestServer, state: Path, tmp_path: Path
) -> None:
    config = oauth_config(tmp_path, state, USER, microsoft_block(idp))
    plain = cli(state, "auth", "login", "Plain", "--config", str(config))
    assert plain.returncode == 1
    assert plain.stderr.strip() == (
        "engage-listener: listener 'Plain' has no OAuth2 account (Authentication)"
    )
    assert "Traceback" not in plain.stderr and plain.stdout == ""
    missing = cli(state, "auth", "login", "Nope", "--config", str(config))
    assert missing.returncode == 1
    assert f"no listener 'Nope' in {config}" in missing.stderr
    assert "Traceback" not in missing.stderr
    assert not idp.state.requests  # nobody asked the identity provider anything


# ----- Google installed app: the consent URL out, the pasted address in -------------------------
@pytest.mark.parametrize("paste", ["url", "code"])
def test_google_login_by_pasted_redirect_from_the_terminal(
    idp: OAuthTestServer, state: Path, tmp_path: Path, paste: str
) -> None:
    idp.add_google_client(GOOGLE_CLIENT, GOOGLE_SECRET)
    config = oauth_config(tmp_path, state, GMAIL, google_block(idp))
    terminal = Terminal(state, config)

    def consent_url() -> str | None:
        return next((w for w in terminal.output.split() if w.startswith("https://accounts")), None)

    try:
        terminal.wait_for(lambda: "Paste that whole address" in terminal.output, "the prompt")
        url = consent_url()
        assert url is not None and "code_challenge=" in url
        landed = idp.consent(url, GMAIL)
        terminal.paste(landed if paste == "url" else landed.split("code=")[1].split("&")[0])
        assert terminal.finish() == 0, terminal.output + terminal.stderr()
    finally:
        terminal.kill()
    assert terminal.output.rstrip().endswith("Cloud IMAP: signed in")
    assert idp.grants("authorization_code") == 1
    (row,) = status_rows(state, config)
    assert (row["account"], row["state"], row["kind"]) == (
        GMAIL,
        "signed in",
        "Google installed app (refresh token)",
    )
    no_secrets(terminal.output + (state / "oauth-tokens.json").read_text(), idp)


def test_google_login_with_another_attempts_address_fails(
    idp: OAuthTestServer, state: Path, tmp_path: Path
) -> None:
    idp.add_google_client(GOOGLE_CLIENT, GOOGLE_SECRET)
    config = oauth_config(tmp_path, state, GMAIL, google_block(idp))
    terminal = Terminal(state, config)
    try:
        terminal.wait_for(lambda: "Paste that whole address" in terminal.output, "the prompt")
        terminal.paste("http://localhost/?state=someone-else&code=code-xyz&scope=x")
        assert terminal.finish() == 1
    finally:
        terminal.kill()
    assert "another sign-in attempt" in terminal.output
    assert idp.grants("authorization_code") == 0
    (row,) = status_rows(state, config)
    assert row["state"] != "signed in"


# ----- Microsoft by pasted address (authorization code with PKCE) -------------------------------
def microsoft_sign_in(terminal: Terminal, idp: OAuthTestServer) -> str:
    """Wait for the printed sign-in address; the user signs in there: where they land."""
    terminal.wait_for(lambda: "Paste that whole address" in terminal.output, "the prompt")
    url = next(w for w in terminal.output.split() if "/oauth2/v2.0/authorize?" in w)
    assert "code_challenge=" in url and "code_challenge_method=S256" in url
    return idp.consent(url, USER)


@pytest.mark.parametrize("paste", ["url", "code"])
def test_microsoft_login_by_pasted_address_where_device_code_is_blocked(
    idp: OAuthTestServer, state: Path, tmp_path: Path, paste: str
) -> None:
    idp.add_ms_app("tenant-a", "public-1")
    config = oauth_config(tmp_path, state, USER, microsoft_block(idp))
    terminal = Terminal(state, config)
    try:
        landed = microsoft_sign_in(terminal, idp)
        assert landed.startswith("http://localhost/?")  # the default RedirectUri
        terminal.paste(landed if paste == "url" else landed.split("code=")[1].split("&")[0])
        assert terminal.finish() == 0, terminal.output + terminal.stderr()
    finally:
        terminal.kill()
    assert f"Signed in as {USER}; the tokens are stored encrypted." in terminal.output
    assert idp.grants("authorization_code") == 1 and idp.grants(DEVICE_GRANT) == 0
    no_secrets(terminal.output + (state / "oauth-tokens.json").read_text(), idp)
    # The daemon then refreshes silently with what was stored.
    (cfg, _) = load_config(config).imap_listeners
    assert cfg.authentication is not None
    key = engage_secrets.load_key(state / "engage-listener.key")
    cache = TokenCache(state / "oauth-tokens.json", key)
    imap = provider_for(cfg.authentication, USER, cache=cache, purpose="imap")
    assert idp.valid(USER, asyncio.run(imap.token(force_refresh=True)))
    assert idp.grants("refresh_token") == 1


def test_microsoft_login_uses_the_configured_redirect_uri(
    idp: OAuthTestServer, state: Path, tmp_path: Path
) -> None:
    idp.add_ms_app("tenant-a", "public-1")
    block = microsoft_block(idp).replace(
        "</Authentication>",
        "<RedirectUri>https://login.microsoftonline.com/common/oauth2/"
        "nativeclient</RedirectUri></Authentication>",
    )
    config = oauth_config(tmp_path, state, USER, block)
    terminal = Terminal(state, config)
    try:
        landed = microsoft_sign_in(terminal, idp)
        assert landed.startswith("https://login.microsoftonline.com/common/oauth2/nativeclient")
        terminal.paste(landed)
        assert terminal.finish() == 0, terminal.output + terminal.stderr()
    finally:
        terminal.kill()


@pytest.mark.parametrize(
    ("pasted", "expected"),
    [
        ("http://localhost/?state=someone-else&code=code-xyz", "another sign-in attempt"),
        (
            "http://localhost/?error=access_denied&error_description=AADSTS65004%3A+declined",
            "access_denied",
        ),
    ],
)
def test_microsoft_login_refuses_another_attempt_or_a_denial(
    idp: OAuthTestServer, state: Path, tmp_path: Path, pasted: str, expected: str
) -> None:
    idp.add_ms_app("tenant-a", "public-1")
    config = oauth_config(tmp_path, state, USER, microsoft_block(idp))
    terminal = Terminal(state, config)
    try:
        microsoft_sign_in(terminal, idp)
        terminal.paste(pasted)
        assert terminal.finish() == 1
        errors = terminal.stderr()
    finally:
        terminal.kill()
    assert expected in terminal.output and "Traceback" not in errors
    assert idp.grants("authorization_code") == 0
    (row,) = status_rows(state, config)
    assert row["state"] != "signed in"
