"""Token providers against a real (local, HTTPS) identity provider: msal and google-auth.

No mail server here (see test_oauth_mail): these tests are about getting, caching,
refreshing, rotating and storing tokens, and about turning identity-provider errors
into advice an operator can act on, without a secret ever showing.
"""

from __future__ import annotations

import io
import json
import stat
from pathlib import Path

import pytest

from engage_listener.oauth import provider as oauth
from engage_listener.oauth.provider import (
    IdentityProviderUnavailable,
    OAuthError,
    auth_status,
    login_interactive,
    provider_for,
)
from engage_listener.oauth.token_cache import TokenCache, open_cache
from tests.support.servers.oauth_server import (
    DEVICE_GRANT,
    JWT_GRANT,
    OAuthTestServer,
    certificate_file,
    google_auth,
    ms_auth,
    service_account_file,
    token_cache,
)

SECRET = "app-secret-Value~1234567890"


@pytest.fixture
def cache(tmp_path: Path) -> tuple[TokenCache, Path]:
    return token_cache(tmp_path / "state")


def assert_no_secrets(text: str, idp: OAuthTestServer, *extra: str) -> None:
    for secret in [*idp.issued, *extra]:
        assert secret not in text


def cache_text(cache: TokenCache) -> str:
    return cache.path.read_text()


# ----- Microsoft, app-only ------------------------------------------------------------------
async def test_client_secret_token_is_cached_refreshed_on_demand_and_stored_encrypted(
    idp: OAuthTestServer, cache: tuple[TokenCache, Path]
) -> None:
    tokens, key_file = cache
    idp.add_ms_app("tenant-a", "app-1", secret=SECRET, mailbox="box@contoso.test")
    auth = ms_auth(idp, key_file, client_secret=SECRET)
    provider = provider_for(auth, "box@contoso.test", cache=tokens, purpose="imap")
    first = await provider.token()
    assert idp.valid("box@contoso.test", first)
    assert await provider.token() == first  # well before expiry: no new request
    assert idp.grants("client_credentials") == 1
    forced = await provider.token(force_refresh=True)
    assert forced != first and idp.grants("client_credentials") == 2
    scopes = [f.get("scope", "") for p, f in idp.state.requests if p.endswith("/token")]
    assert all("https://outlook.office365.com/.default" in s for s in scopes)
    assert stat.S_IMODE(tokens.path.stat().st_mode) == 0o600
    assert_no_secrets(cache_text(tokens), idp, SECRET)
    status = auth_status(auth, "box@contoso.test", tokens)
    assert status["kind"] == "Microsoft app-only (client secret)"
    assert status["expires"] != "-" and status["last_refresh"] != "-"
    assert_no_secrets(json.dumps(status), idp, SECRET)


async def test_certificate_credential_signs_an_assertion_the_provider_verifies(
    idp: OAuthTestServer, cache: tuple[TokenCache, Path], tmp_path: Path
) -> None:
    tokens, key_file = cache
    cert = certificate_file(tmp_path / "app.pem")
    idp.add_ms_app("tenant-a", "app-1", certificate=cert, mailbox="box@contoso.test")
    auth = ms_auth(idp, key_file, certificate_file=tmp_path / "app.pem")
    token = await provider_for(auth, "box@contoso.test", cache=tokens, purpose="pop3").token()
    assert idp.valid("box@contoso.test", token)
    form = next(f for p, f in idp.state.requests if p.endswith("/token"))
    assert "client_assertion" in form and "client_secret" not in form


async def test_token_close_to_expiry_is_renewed_before_use(
    idp: OAuthTestServer, cache: tuple[TokenCache, Path]
) -> None:
    tokens, key_file = cache
    idp.add_ms_app("tenant-a", "app-1", secret=SECRET, mailbox="box@contoso.test")
    idp.expires_in = int(oauth.REFRESH_MARGIN) - 10  # always inside the renewal margin
    provider = provider_for(
        ms_auth(idp, key_file, client_secret=SECRET),
        "box@contoso.test",
        cache=tokens,
        purpose="imap",
    )
    first = await provider.token()
    second = await provider.token()
    assert first != second and idp.grants("client_credentials") == 2


@pytest.mark.parametrize(
    ("setup", "code", "words"),
    [
        ({"secret_expired": True}, "AADSTS7000222", "client secret has expired"),
        ({"secret": "other"}, "AADSTS7000215", "secret's Value"),
    ],
)
async def test_client_secret_errors_become_advice(
    idp: OAuthTestServer,
    cache: tuple[TokenCache, Path],
    setup: dict[str, object],
    code: str,
    words: str,
) -> None:
    tokens, key_file = cache
    idp.add_ms_app("tenant-a", "app-1", **{"secret": SECRET, "mailbox": "b@x.test", **setup})
    auth = ms_auth(idp, key_file, client_secret=SECRET)
    with pytest.raises(OAuthError) as caught:
        await provider_for(auth, "b@x.test", cache=tokens, purpose="smtp").token()
    assert caught.value.code == code and words in str(caught.value)
    assert words in oauth.advice(caught.value)
    assert SECRET not in str(caught.value)
    assert words in auth_status(auth, "b@x.test", tokens)["state"]


@pytest.mark.filterwarnings("ignore:Using /common:DeprecationWarning")
async def test_wrong_tenant_and_unknown_app_and_missing_tenant(
    idp: OAuthTestServer, cache: tuple[TokenCache, Path]
) -> None:
    tokens, key_file = cache
    idp.add_ms_app("tenant-a", "app-1", secret=SECRET, mailbox="b@x.test")
    cases = [
        ({"tenant_id": "common"}, "AADSTS50194", "single tenant: set TenantId"),
        ({"client_id": "nobody"}, "AADSTS700016", "check ClientId and TenantId"),
        ({"tenant_id": "no-such-tenant"}, "AADSTS90002", "check TenantId"),
    ]
    for changes, code, words in cases:
        auth = ms_auth(idp, key_file, client_secret=SECRET, **changes)
        with pytest.raises(OAuthError) as caught:
            await provider_for(auth, "b@x.test", cache=tokens, purpose="imap").token()
        assert caught.value.code == code, changes
        assert words in caught.value.advice, changes


async def test_missing_consent_is_explained(
    idp: OAuthTestServer, cache: tuple[TokenCache, Path]
) -> None:
    tokens, key_file = cache
    idp.add_ms_app("tenant-a", "app-1", secret=SECRET, mailbox="b@x.test")
    description = "AADSTS65001: The user or administrator has not consented."
    idp.fail_next(400, error="invalid_grant", error_codes=[65001], error_description=description)
    with pytest.raises(OAuthError) as caught:
        await provider_for(
            ms_auth(idp, key_file, client_secret=SECRET), "b@x.test", cache=tokens, purpose="imap"
        ).token()
    assert "admin consent" in caught.value.advice


async def test_identity_provider_down_is_transient(
    idp: OAuthTestServer, cache: tuple[TokenCache, Path]
) -> None:
    tokens, key_file = cache
    idp.add_ms_app("tenant-a", "app-1", secret=SECRET, mailbox="b@x.test")
    provider = provider_for(
        ms_auth(idp, key_file, client_secret=SECRET), "b@x.test", cache=tokens, purpose="imap"
    )
    with idp.down(), pytest.raises(IdentityProviderUnavailable):
        await provider.token()
    assert idp.valid("b@x.test", await provider.token())  # back up: works again


# ----- Microsoft, delegated (device code) ------------------------------------------------------
async def sign_in_by_device_code(
    idp: OAuthTestServer, tokens: TokenCache, key_file: Path, user: str, pending: int = 0
) -> tuple[oauth.AuthConfig, str]:
    idp.add_ms_app("tenant-a", "public-1")
    idp.device_user, idp.device_pending = user, pending  # each pending poll waits 1 s
    auth = ms_auth(idp, key_file, client_id="public-1")
    out = io.StringIO()
    await login_interactive(
        auth, user, tokens, out=out, inp=io.StringIO(), purpose="imap", device_code=True
    )
    return auth, out.getvalue()


async def test_device_code_sign_in_shows_url_and_code_then_refreshes_silently(
    idp: OAuthTestServer, cache: tuple[TokenCache, Path]
) -> None:
    tokens, key_file = cache
    user = "soporte@contoso.test"
    assert auth_status(ms_auth(idp, key_file, client_id="public-1"), user, tokens)[
        "state"
    ].startswith("not signed in")
    auth, shown = await sign_in_by_device_code(idp, tokens, key_file, user, pending=1)
    assert f"{idp.authority}/devicelogin" in shown and "enter the code" in shown
    assert idp.grants(DEVICE_GRANT) == 2  # one "authorization_pending", then the tokens
    scope = next(f["scope"] for p, f in idp.state.requests if p.endswith("/devicecode"))
    assert "https://outlook.office.com/IMAP.AccessAsUser.All" in scope
    status = auth_status(auth, user, tokens)
    assert status["state"] == "signed in" and status["signed_in"] != "-"
    assert_no_secrets(cache_text(tokens) + shown + json.dumps(status), idp)

    imap = provider_for(auth, user, cache=tokens, purpose="imap")
    token = await imap.token()  # from the sign-in, no request
    assert idp.valid(user, token) and idp.grants("refresh_token") == 0
    smtp = await provider_for(auth, user, cache=tokens, purpose="smtp").token()
    assert idp.valid(user, smtp) and idp.grants("refresh_token") == 1
    scope = [f["scope"] for _, f in idp.state.requests if f.get("grant_type") == "refresh_token"]
    assert "https://outlook.office.com/SMTP.Send" in scope[0]
    # A new process (new cache object) reuses the stored sign-in.
    again = TokenCache(tokens.path, token_cache(tokens.path.parent)[0]._key)
    fresh = await provider_for(auth, user, cache=again, purpose="imap").token(force_refresh=True)
    assert idp.valid(user, fresh)


async def test_rotated_refresh_token_is_stored_at_once(
    idp: OAuthTestServer, cache: tuple[TokenCache, Path]
) -> None:
    tokens, key_file = cache
    user = "rotating@contoso.test"
    auth, _ = await sign_in_by_device_code(idp, tokens, key_file, user)
    (original,) = idp.refresh_tokens(user)
    idp.rotate_refresh_tokens = True
    await provider_for(auth, user, cache=tokens, purpose="imap").token(force_refresh=True)
    (rotated,) = idp.refresh_tokens(user)  # the old one is void at the provider now
    assert rotated != original
    stored = tokens.get(oauth.account_name(auth, user))
    assert stored is not None and rotated in stored.secret["msal"]
    assert original not in stored.secret["msal"]
    # What a restart reads from disk still works (it is the rotated one).
    restarted = TokenCache(tokens.path, tokens._key)
    token = await provider_for(auth, user, cache=restarted, purpose="imap").token(
        force_refresh=True
    )
    assert idp.valid(user, token)


async def test_revoked_grant_asks_for_a_new_sign_in(
    idp: OAuthTestServer, cache: tuple[TokenCache, Path]
) -> None:
    tokens, key_file = cache
    user = "revoked@contoso.test"
    auth, _ = await sign_in_by_device_code(idp, tokens, key_file, user)
    idp.revoke(user)
    with pytest.raises(OAuthError) as caught:
        await provider_for(auth, user, cache=tokens, purpose="imap").token(force_refresh=True)
    assert "auth login" in caught.value.advice
    assert_no_secrets(str(caught.value), idp)
    assert "auth login" in auth_status(auth, user, tokens)["state"]


async def test_no_sign_in_yet(idp: OAuthTestServer, cache: tuple[TokenCache, Path]) -> None:
    tokens, key_file = cache
    idp.add_ms_app("tenant-a", "public-1")
    auth = ms_auth(idp, key_file, client_id="public-1")
    with pytest.raises(OAuthError, match="no Microsoft sign-in yet") as caught:
        await provider_for(auth, "x@contoso.test", cache=tokens, purpose="imap").token()
    assert "auth login" in caught.value.advice


# ----- Google ---------------------------------------------------------------------------------
async def test_service_account_impersonates_the_mailbox(
    idp: OAuthTestServer, cache: tuple[TokenCache, Path], tmp_path: Path
) -> None:
    tokens, key_file = cache
    key = service_account_file(idp, tmp_path / "sa.json", {"ventas@empresa.test"})
    auth = google_auth(idp, key_file, service_account_key_file=key)
    token = await provider_for(auth, "ventas@empresa.test", cache=tokens, purpose="imap").token()
    assert idp.valid("ventas@empresa.test", token) and idp.grants(JWT_GRANT) == 1
    with pytest.raises(OAuthError) as caught:  # no domain-wide delegation for this one
        await provider_for(auth, "ceo@empresa.test", cache=tokens, purpose="imap").token()
    assert caught.value.code == "unauthorized_client"
    assert "Domain-wide delegation" in caught.value.advice


async def google_sign_in(
    idp: OAuthTestServer, tokens: TokenCache, key_file: Path, user: str, paste: str = "url"
) -> oauth.AuthConfig:
    idp.add_google_client("client-1.apps.googleusercontent.com", "google-client-secret-1")
    auth = google_auth(
        idp,
        key_file,
        client_id="client-1.apps.googleusercontent.com",
        client_secret="google-client-secret-1",
    )

    class Browser(io.StringIO):
        """Reads the consent URL the command printed, consents, pastes the redirect."""

        def readline(self, size: int | None = -1) -> str:
            url = next(w for w in out.getvalue().split() if w.startswith("https://accounts"))
            landed = idp.consent(url, user)
            return (landed if paste == "url" else landed.split("code=")[1].split("&")[0]) + "\n"

    out = io.StringIO()
    await login_interactive(auth, user, tokens, out=out, inp=Browser(), purpose="imap")
    assert "https://mail.google.com/" in out.getvalue().replace("%3A", ":").replace("%2F", "/")
    return auth


@pytest.mark.parametrize("paste", ["url", "code"])
async def test_installed_app_sign_in_by_pasted_redirect_then_refresh(
    idp: OAuthTestServer, cache: tuple[TokenCache, Path], paste: str
) -> None:
    tokens, key_file = cache
    user = "soporte@gmail.test"
    if paste == "code":  # a bare code carries no state: PKCE still binds it
        auth = await google_sign_in(idp, tokens, key_file, user, paste)
    else:
        auth = await google_sign_in(idp, tokens, key_file, user)
    assert idp.grants("authorization_code") == 1
    token = await provider_for(auth, user, cache=tokens, purpose="smtp").token()
    assert idp.valid(user, token) and idp.grants("refresh_token") == 1
    status = auth_status(auth, user, tokens)
    assert status["kind"] == "Google installed app (refresh token)"
    assert_no_secrets(cache_text(tokens) + json.dumps(status), idp)


async def test_google_rotated_refresh_token_stored_and_revocation_explained(
    idp: OAuthTestServer, cache: tuple[TokenCache, Path]
) -> None:
    tokens, key_file = cache
    user = "rot@gmail.test"
    auth = await google_sign_in(idp, tokens, key_file, user)
    idp.rotate_refresh_tokens = True
    await provider_for(auth, user, cache=tokens, purpose="imap").token()
    (rotated,) = idp.refresh_tokens(user)
    stored = tokens.get(oauth.account_name(auth, user))
    assert stored is not None and stored.secret["refresh_token"] == rotated
    idp.revoke(user)
    with pytest.raises(OAuthError) as caught:
        await provider_for(auth, user, cache=tokens, purpose="imap").token(force_refresh=True)
    assert caught.value.code == "invalid_grant"
    assert "auth login" in caught.value.advice and "revoked" in caught.value.advice
    assert_no_secrets(str(caught.value), idp)


def test_advice_for_known_codes() -> None:
    assert "expired" in oauth.advice(Exception("AADSTS7000222: The provided client secret"))
    assert "TenantId" in oauth.advice(Exception("AADSTS50194: not multi-tenant"))
    assert "admin consent" in oauth.advice(Exception("AADSTS65001: no consent"))
    assert "ClientId" in oauth.advice(Exception("AADSTS700016: app not found"))
    assert "auth login" in oauth.advice(Exception("invalid_grant: Token has been revoked."))
    assert oauth.advice(Exception("something else")) == ""


async def test_a_sign_in_by_another_process_reaches_the_running_daemon(
    idp: OAuthTestServer, cache: tuple[TokenCache, Path]
) -> None:
    daemon_cache, key_file = cache
    user = "later@gmail.test"
    idp.add_google_client("client-1.apps.googleusercontent.com", "google-client-secret-1")
    auth = google_auth(
        idp,
        key_file,
        client_id="client-1.apps.googleusercontent.com",
        client_secret="google-client-secret-1",
    )
    daemon = provider_for(auth, user, cache=daemon_cache, purpose="imap")
    with pytest.raises(OAuthError, match="no Google sign-in yet"):
        await daemon.token()
    cli_cache = TokenCache(daemon_cache.path, daemon_cache._key)  # `auth login` elsewhere
    await google_sign_in(idp, cli_cache, key_file, user)
    assert idp.valid(user, await daemon.token())


async def test_wrong_key_or_damaged_cache_is_an_operator_problem(
    idp: OAuthTestServer, cache: tuple[TokenCache, Path], tmp_path: Path
) -> None:
    tokens, key_file = cache
    idp.add_ms_app("tenant-a", "app-1", secret=SECRET, mailbox="b@x.test")
    auth = ms_auth(idp, key_file, client_secret=SECRET)
    await provider_for(auth, "b@x.test", cache=tokens, purpose="imap").token()
    other_key, _ = token_cache(tmp_path / "other")
    wrong = TokenCache(tokens.path, other_key._key)
    with pytest.raises(OAuthError, match="cannot be decrypted") as caught:
        await provider_for(auth, "b@x.test", cache=wrong, purpose="imap").token()
    assert "auth login" in caught.value.advice


def test_open_cache_is_one_object_per_file(tmp_path: Path) -> None:
    _, key_file = token_cache(tmp_path)
    first = open_cache(key_file, tmp_path / "tokens.json")
    assert open_cache(key_file, tmp_path / "tokens.json") is first
    assert open_cache(key_file, tmp_path / "other.json") is not first
