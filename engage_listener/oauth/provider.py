"""OAuth2 (SASL XOAUTH2) for Microsoft 365 and Google: token providers, sign-in, advice.

The mail protocols ask one question, :meth:`TokenProvider.token`: "a valid access
token, please". Behind it, one :class:`Account` per mailbox and identity provider
(shared by the IMAP/POP3 listener and the SMTP sender of that mailbox, so a
refresh token is never used twice at once) keeps tokens in the encrypted
:class:`~engage_listener.oauth.token_cache.TokenCache`, renews them
:data:`REFRESH_MARGIN` seconds before they expire, and stores a rotated refresh
token the moment it arrives. The blocking libraries (msal, google-auth) run in
a worker thread. A refused token is retried once with a forced refresh by the
protocol modules; what is still refused becomes an :class:`OAuthError` whose
text ends with plain advice (:func:`advice`), never with a secret.

This module stays light (no msal or google-auth import) so the protocol modules
may import it; `oauth_ms` and `oauth_google` are loaded on first use.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol, TextIO

from engage_listener.config.auth import AuthConfig
from engage_listener.errors import AuthenticationError, SecretError, TransientError
from engage_listener.oauth.advice import LOGIN_AGAIN, advice, refusal_advice
from engage_listener.oauth.token_cache import TokenCache, register_state_secrets
from engage_listener.observe.logs import register_secret, scrub

REFRESH_MARGIN = 300.0  # seconds: a token this close to its expiry is renewed first
PURPOSES = ("imap", "pop3", "smtp", "graph")
MS_APP_SCOPE = "https://outlook.office365.com/.default"
MS_GRAPH_RESOURCE = "https://graph.microsoft.com"  # Graph's app-only scope is this + /.default
MS_DELEGATED_SCOPES = {
    "imap": "https://outlook.office.com/IMAP.AccessAsUser.All",
    "pop3": "https://outlook.office.com/POP.AccessAsUser.All",
    "smtp": "https://outlook.office.com/SMTP.Send",
    "graph": "https://graph.microsoft.com/Mail.ReadWrite.Shared",  # own and shared mailboxes
}
GOOGLE_SCOPE = "https://mail.google.com/"


class TokenProvider(Protocol):
    """What IMAP, POP3 and SMTP need: a valid access token (forced: a brand-new one)."""

    async def token(self, *, force_refresh: bool = False) -> str: ...


class OAuthError(AuthenticationError):
    """The identity provider refused (or no sign-in yet): an operator must act on `advice`."""

    def __init__(self, message: str, advice: str = "", code: str = "") -> None:
        super().__init__(f"{message.rstrip('. ')}. {advice}" if advice else message)
        self.advice = advice
        self.code = code


class IdentityProviderUnavailable(TransientError):
    """The identity provider could not be reached or answered 5xx: try again later."""


class TokenRefused(AuthenticationError):
    """The mail server refused the access token (raised again after one forced refresh)."""


def xoauth2_payload(username: str, token: str) -> str:
    """The SASL XOAUTH2 initial response, base64 (it contains the token: never log it)."""
    raw = f"user={username}\x01auth=Bearer {token}\x01\x01".encode()
    payload = base64.b64encode(raw).decode("ascii")
    register_secret(token)
    register_secret(payload)  # the command's text holds this form, not the bare token
    return payload


def xoauth2_error(challenge: bytes) -> str:
    """The server's XOAUTH2 error challenge (base64 JSON) as short readable text."""
    try:
        text = base64.b64decode(challenge.strip(), validate=True).decode("utf-8", "replace")
    except ValueError:
        text = challenge.decode("ascii", "replace")
    return " ".join(text.split())[:200]


def scopes_for(auth: AuthConfig, purpose: str, resource: str | None = None) -> list[str]:
    """The scopes of a token for `purpose`; `resource` is Graph's origin for purpose graph
    (a national cloud's Graph host, or a test's imitation), default graph.microsoft.com."""
    if purpose not in PURPOSES:
        raise ValueError(f"purpose must be one of {PURPOSES}, not {purpose!r}")
    if auth.type == "Google":
        return [GOOGLE_SCOPE]
    if purpose == "graph":
        origin = (resource or MS_GRAPH_RESOURCE).rstrip("/")
        if auth.flow == "client_credentials":
            return [f"{origin}/.default"]
        return [f"{origin}/Mail.ReadWrite.Shared"]  # delegated: own and shared mailboxes
    if auth.flow == "client_credentials":
        return [MS_APP_SCOPE]
    return [MS_DELEGATED_SCOPES[purpose]]


def account_name(auth: AuthConfig, username: str) -> str:
    """The token cache key: one entry per identity provider, app and mailbox."""
    where = auth.tenant_id or auth.token_uri or ""
    app = auth.client_id or str(auth.service_account_key_file or "")
    return f"{auth.type.lower()}:{auth.flow}:{where}:{app}:{username.lower()}"


def http_session(ca_file: object | None, timeout: float = 30.0) -> Any:
    """A requests session for the identity provider: CaFile wins over $REQUESTS_CA_BUNDLE.

    requests lets the environment's CA bundle override a session's `verify`; proxies
    from the environment (HTTPS_PROXY) are still honoured.
    """
    import requests  # noqa: PLC0415 - loaded with msal/google-auth, not by the protocols

    class Session(requests.Session):
        def merge_environment_settings(self, *args: Any, **kwargs: Any) -> Any:
            settings = super().merge_environment_settings(*args, **kwargs)
            if ca_file is not None:
                settings["verify"] = str(ca_file)
            return settings

        def request(self, *args: Any, **kwargs: Any) -> Any:
            kwargs.setdefault("timeout", timeout)
            return super().request(*args, **kwargs)

    session = Session()
    adapter = requests.adapters.HTTPAdapter(max_retries=1)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    return session


def iso(moment: float | None) -> str:
    if not moment:
        return "-"
    return dt.datetime.fromtimestamp(moment, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


class Account:
    """One mailbox's credential with one identity provider; thread-safe, shared.

    Subclasses implement `_fetch` (renew an access token, may update `state`) and
    `_sign_in` (the interactive part); `state` is the secret part of the cache entry.
    """

    def __init__(self, auth: AuthConfig, username: str, cache: TokenCache) -> None:
        self.auth, self.username, self.cache = auth, username, cache
        self.name = account_name(auth, username)
        self.state: dict[str, Any] = {}
        self._revision = -1
        self._tokens: dict[tuple[str, ...], tuple[str, float]] = {}  # scopes -> token, expiry
        self._lock = threading.Lock()
        self.now: Callable[[], float] = time.time

    # ----- for the protocol modules (in a worker thread) ------------------------------
    def token(self, scopes: list[str], force: bool) -> str:
        with self._lock:
            self._reload()
            key = tuple(scopes)
            cached = self._tokens.get(key)
            if cached and not force and cached[1] - self.now() > REFRESH_MARGIN:
                return cached[0]
            try:
                token, expires_in, fresh = self._fetch(scopes, force)
            except OAuthError as exc:
                self._note(last_error=exc.advice or str(exc))
                raise
            register_secret(token)  # before anything can quote it in an error
            expiry = self.now() + expires_in
            self._tokens[key] = (token, expiry)
            changes: dict[str, Any] = {"expires_at": expiry, "last_error": ""}
            if fresh:
                changes["last_refresh"] = self.now()
            self._note(**changes)
            return token

    def login(self, scopes: list[str], out: TextIO, inp: TextIO, device_code: bool = False) -> None:
        with self._lock:
            self._reload()
            try:
                expires_in = self._sign_in(scopes, out, inp, device_code)
            except OAuthError as exc:
                self._note(last_error=exc.advice or str(exc))
                raise
            self._tokens.clear()
            now = self.now()
            meta = {"signed_in_at": now, "last_refresh": now, "last_error": ""}
            self._save(**meta, expires_at=now + expires_in)

    # ----- for subclasses -------------------------------------------------------------
    def _fetch(self, scopes: list[str], force: bool) -> tuple[str, float, bool]:
        """(access token, seconds it stays valid, whether it came from the provider)."""
        raise NotImplementedError

    def _sign_in(self, scopes: list[str], out: TextIO, inp: TextIO, device_code: bool) -> float:
        """The interactive part; returns how long the access token it got stays valid.
        `device_code`: Microsoft's device code flow instead of a pasted sign-in address."""
        raise NotImplementedError

    def _save(self, **meta: Any) -> None:
        """Write `state` now (a rotated refresh token must never be lost)."""
        register_state_secrets(self.state)
        try:
            base = self.cache.metas().get(self.name, {})
            merged = {**base, "kind": self.auth.kind, "account": self.username, **meta}
            self._revision = self.cache.put(self.name, merged, self.state)
        except (OSError, SecretError) as exc:
            raise OAuthError(
                f"cannot write the token cache {self.cache.path}: {exc}",
                "Check that the state directory exists and the service user may write it.",
            ) from None

    def _reload(self) -> None:
        """Pick up a sign-in made meanwhile by `auth login` in another process."""
        try:
            revision = self.cache.revision(self.name)
            if revision == self._revision:
                return
            entry = self.cache.get(self.name)
        except SecretError as exc:  # wrong key, damaged file: the operator must act
            raise OAuthError(str(exc), LOGIN_AGAIN) from None
        self.state = dict(entry.secret) if entry is not None else {}
        register_state_secrets(self.state)
        self._revision = entry.revision if entry is not None else 0
        self._tokens.clear()
        self._loaded()

    def _loaded(self) -> None:
        """Hook: `state` was (re)loaded from the cache."""

    def _note(self, **meta: Any) -> None:
        """Record readable facts for `auth status`; best effort, never fails a login."""
        if isinstance(meta.get("last_error"), str):
            meta["last_error"] = scrub(meta["last_error"])
        try:
            if self._revision > 0:
                self.cache.update_meta(self.name, **meta)  # the secret part is unchanged
            else:
                self._save(**meta)
        except (OSError, SecretError, OAuthError):
            pass


class _Provider:
    """The TokenProvider for one purpose (scopes) of a shared Account."""

    def __init__(self, account: Account, scopes: list[str], purpose: str) -> None:
        self.account, self.scopes, self.purpose = account, scopes, purpose

    async def token(self, *, force_refresh: bool = False) -> str:
        return await asyncio.to_thread(self.account.token, self.scopes, force_refresh)

    @property
    def refusal_advice(self) -> str:
        return refusal_advice(self.account.auth, self.purpose)

    def __repr__(self) -> str:
        return f"TokenProvider({self.account.name!r}, {self.purpose})"


def account_for(auth: AuthConfig, username: str, cache: TokenCache) -> Account:
    """The one Account object of this mailbox in this process (kept in `cache.shared`)."""
    name = account_name(auth, username)
    with _SHARED_LOCK:
        account = cache.shared.get(name)
        if not isinstance(account, Account):
            if auth.type == "Microsoft":
                from engage_listener.oauth.microsoft import MicrosoftAccount  # noqa: PLC0415 - msal only when used

                account = MicrosoftAccount(auth, username, cache)
            elif auth.type == "Google":
                from engage_listener.oauth.google import GoogleAccount  # noqa: PLC0415 - likewise

                account = GoogleAccount(auth, username, cache)
            else:
                raise ValueError("Password authentication has no token provider")
            cache.shared[name] = account
    return account


_SHARED_LOCK = threading.Lock()


def provider_for(
    auth: AuthConfig, username: str, *, cache: TokenCache, purpose: str,
    resource: str | None = None,
) -> TokenProvider:  # fmt: skip
    """The token provider of `username` for `purpose` (imap, pop3, smtp or graph; for
    graph, `resource` is the Graph origin whose scope is asked for)."""
    scopes = scopes_for(auth, purpose, resource)
    return _Provider(account_for(auth, username, cache), scopes, purpose)


async def login_interactive(
    auth: AuthConfig,
    username: str,
    cache: TokenCache,
    *,
    out: TextIO,
    inp: TextIO,
    purpose: str,
    device_code: bool = False,
    resource: str | None = None,
) -> None:
    """The once-only sign-in (a pasted sign-in address, or Microsoft's device code);
    app-only kinds just get a token. `resource`: Graph's origin for purpose graph, as for
    `provider_for` (the sign-in asks for the scope the daemon will use)."""
    account = account_for(auth, username, cache)
    scopes = scopes_for(auth, purpose, resource)
    await _in_daemon_thread(account.login, scopes, out, inp, device_code)


async def _in_daemon_thread(fn: Callable[..., None], *args: Any) -> None:
    """Run a blocking sign-in where ^C can abandon it (waiting for a device code, a paste)."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    def settle(error: BaseException | None) -> None:
        if done.done():  # cancelled meanwhile
            return
        if error is None:
            done.set_result(None)
        else:
            done.set_exception(error)

    def run() -> None:
        try:
            fn(*args)
        except BaseException as exc:  # handed to the awaiting coroutine
            loop.call_soon_threadsafe(settle, exc)
        else:
            loop.call_soon_threadsafe(settle, None)

    threading.Thread(target=run, name="oauth-sign-in", daemon=True).start()
    await done


def auth_status(auth: AuthConfig, username: str, cache: TokenCache) -> dict[str, str]:
    """Kind of credential, state, token expiry and last refresh; never a secret."""
    meta = cache.metas().get(account_name(auth, username), {})
    interactive = auth.flow in ("delegated", "installed_app")
    if meta.get("signed_in_at"):
        state = "signed in"
    elif interactive:
        state = "not signed in: run `engage-listener auth login`"
    else:
        state = "no token yet" if not meta else "ok"
    if meta.get("last_error"):
        state = f"failing: {meta['last_error']}"
    return {
        "account": username,
        "kind": auth.kind,
        "state": state,
        "signed_in": iso(meta.get("signed_in_at")),
        "expires": iso(meta.get("expires_at")),
        "last_refresh": iso(meta.get("last_refresh")),
    }


__all__ = [
    "IdentityProviderUnavailable",
    "OAuthError",
    "TokenProvider",
    "TokenRefused",
    "advice",
    "auth_status",
    "login_interactive",
    "provider_for",
    "refusal_advice",
    "xoauth2_payload",
]
