"""Microsoft Entra ID with msal: app-only client credentials, or a delegated sign-in by a
pasted address (authorization code with PKCE) or by device code.

MSAL keeps its own cache (access tokens per scope, the refresh token, the
account); it is serialised into the encrypted token cache entry whenever MSAL
changed it, so a rotated refresh token is on disk before the token is used.
Instance discovery is off: the Authority (sovereign clouds, tests) is trusted as
configured, and only the tenant's OpenID configuration is read from it.
"""

from __future__ import annotations

import re
from typing import Any, TextIO
from urllib.parse import parse_qs, urlsplit

import msal
import requests

from engage_listener.config.auth import load_certificate
from engage_listener.oauth.advice import LOGIN_AGAIN, microsoft_advice
from engage_listener.oauth.provider import (
    Account,
    IdentityProviderUnavailable,
    OAuthError,
    http_session,
)
from engage_listener.observe.logs import register_secret

DEFAULT_AUTHORITY = "https://login.microsoftonline.com"
HTTP_TIMEOUT = 30
_TRANSIENT = ("temporarily_unavailable", "server_error", "service_unavailable")
_AADSTS = re.compile(r"AADSTS(\d+)")
_AADSTS_PREFIX = re.compile(r"^AADSTS\d+: ")


class MicrosoftAccount(Account):
    """One mailbox with one Entra ID app registration."""

    def _loaded(self) -> None:
        self._msal_cache = msal.SerializableTokenCache()
        if self.state.get("msal"):
            self._msal_cache.deserialize(self.state["msal"])
        app = getattr(self, "_app", None)
        if app is not None:
            app.token_cache = self._msal_cache

    @property
    def app_only(self) -> bool:
        return self.auth.flow == "client_credentials"

    def _application(self) -> Any:
        app = getattr(self, "_app", None)
        if app is not None:
            return app
        auth = self.auth
        options: dict[str, Any] = {
            "authority": f"{(auth.authority or DEFAULT_AUTHORITY).rstrip('/')}/{auth.tenant_id}",
            "token_cache": self._msal_cache,
            "http_client": http_session(auth.ca_file, HTTP_TIMEOUT),
            "instance_discovery": False,
        }
        try:
            if self.app_only:
                app = msal.ConfidentialClientApplication(
                    auth.client_id, client_credential=self._credential(), **options
                )
            else:
                app = msal.PublicClientApplication(auth.client_id, **options)
        except ValueError as exc:  # the tenant's OpenID configuration was refused
            codes = _codes(f"{exc} {exc.__context__}") or ["90002"]
            raise OAuthError(
                f"Microsoft tenant {auth.tenant_id!r} not found at {options['authority']}",
                microsoft_advice(codes),
                f"AADSTS{codes[0]}",
            ) from None
        except requests.RequestException as exc:
            raise _unreachable(exc) from None
        self._app = app
        return app

    def _credential(self) -> str | dict[str, str]:
        auth = self.auth
        if auth.client_secret is not None:
            return auth.client_secret
        assert auth.certificate_file is not None
        try:
            key, thumbprint = load_certificate(auth.certificate_file, auth.certificate_thumbprint)
        except ValueError as exc:
            raise OAuthError(f"Microsoft certificate credential: {exc}") from None
        return {"private_key": key, "thumbprint": thumbprint}

    # ----- tokens -----------------------------------------------------------------------
    def _fetch(self, scopes: list[str], force: bool) -> tuple[str, float, bool]:
        app = self._application()
        try:
            if self.app_only:
                if force:  # acquire_token_for_client answers from its cache otherwise
                    for item in list(self._msal_cache.search("AccessToken")):
                        self._msal_cache.remove_at(item)
                result = app.acquire_token_for_client(scopes)
            else:
                account = self._account(app)
                if account is None:
                    raise OAuthError(f"{self.username}: no Microsoft sign-in yet", LOGIN_AGAIN)
                result = app.acquire_token_silent_with_error(scopes, account, force_refresh=force)
                if result is None:
                    raise OAuthError(f"{self.username}: the Microsoft sign-in is gone", LOGIN_AGAIN)
        except requests.RequestException as exc:
            raise _unreachable(exc) from None
        finally:
            self._persist()
        return self._token_of(result)

    def _account(self, app: Any) -> dict[str, Any] | None:
        accounts: list[dict[str, Any]] = app.get_accounts()
        home = self.state.get("home_account_id")
        for account in accounts:
            if home and account.get("home_account_id") == home:
                return account
        for account in accounts:
            if str(account.get("username", "")).lower() == self.username.lower():
                return account
        return accounts[0] if len(accounts) == 1 else None

    def _persist(self) -> None:
        if self._msal_cache.has_state_changed:
            self.state["msal"] = self._msal_cache.serialize()
            self._save()
            self._msal_cache.has_state_changed = False

    def _token_of(self, result: dict[str, Any]) -> tuple[str, float, bool]:
        for field in ("access_token", "refresh_token", "id_token"):
            if isinstance(result.get(field), str):
                register_secret(result[field])  # the moment the provider returns them
        if "access_token" not in result:
            raise self._error(result)
        fresh = result.get("token_source", "identity_provider") == "identity_provider"
        return str(result["access_token"]), float(result.get("expires_in", 3600)), fresh

    def _error(self, result: dict[str, Any]) -> Exception:
        error = str(result.get("error", "unknown_error"))
        description = str(result.get("error_description", ""))
        codes = [str(c) for c in result.get("error_codes", [])] or _codes(description)
        summary = description.splitlines()[0] if description else error
        summary = _AADSTS_PREFIX.sub("", summary).split(" Trace ID:")[0][:200]
        if error in _TRANSIENT:
            return IdentityProviderUnavailable(f"Microsoft sign-in service: {summary}")
        code = f"AADSTS{codes[0]}" if codes else error
        return OAuthError(
            f"Microsoft sign-in for {self.username} failed ({code}): {summary}",
            microsoft_advice(codes, error),
            code,
        )

    # ----- sign-in ----------------------------------------------------------------------
    def _sign_in(self, scopes: list[str], out: TextIO, inp: TextIO, device_code: bool) -> float:
        app = self._application()
        if self.app_only:
            _token, expires_in, _fresh = self._fetch(scopes, True)
            print(f"App-only access for {self.username} works (no sign-in needed).", file=out)
            return expires_in
        try:
            if device_code:
                result = self._by_device_code(app, scopes, out)
            else:
                result = self._by_pasted_address(app, scopes, out, inp)
        except requests.RequestException as exc:
            raise _unreachable(exc) from None
        return self._signed_in(app, result, out)

    def _by_device_code(self, app: Any, scopes: list[str], out: TextIO) -> dict[str, Any]:
        flow = app.initiate_device_flow(scopes=scopes)
        if "user_code" not in flow:
            raise self._error(flow)
        message = flow.get("message") or (
            f"To sign in, open {flow['verification_uri']} and enter the code {flow['user_code']}."
        )
        print(message, file=out)
        print(f"Sign in as {self.username} (or a user who may open it); waiting...", file=out)
        out.flush()
        result: dict[str, Any] = app.acquire_token_by_device_flow(flow)
        return result

    def _by_pasted_address(
        self, app: Any, scopes: list[str], out: TextIO, inp: TextIO
    ) -> dict[str, Any]:
        """Authorization code with PKCE (msal makes the verifier, state and nonce): works
        where Conditional Access blocks the device code flow. The browser lands on the
        redirect URI, which nothing serves; the operator pastes that address back."""
        redirect = self.auth.redirect_uri
        flow = app.initiate_auth_code_flow(
            scopes, redirect_uri=redirect, login_hint=self.username, prompt="select_account"
        )
        print(f"1. Open this address in a browser and sign in as {self.username}", file=out)
        print("   (a shared mailbox: as a user with Full Access to it):", file=out)
        print(f"   {flow['auth_uri']}", file=out)
        print(f"2. The browser then goes to {redirect}/?code=...", file=out)
        print("   and shows an error page: that is expected.", file=out)
        print("3. Paste that whole address (or only the code) here and press Enter:", file=out)
        out.flush()
        response = _pasted_response(inp.readline(), str(flow["state"]))
        try:
            result: dict[str, Any] = app.acquire_token_by_auth_code_flow(flow, response)
        except ValueError:  # msal: state mismatch or a flow it cannot continue
            raise OAuthError(
                "the pasted address belongs to another sign-in attempt", LOGIN_AGAIN
            ) from None
        return result

    def _signed_in(self, app: Any, result: dict[str, Any], out: TextIO) -> float:
        _token, expires_in, _fresh = self._token_of(result)
        claims = result.get("id_token_claims") or {}
        signed_in = str(claims.get("preferred_username") or self.username)
        for account in app.get_accounts():
            if str(account.get("username", "")).lower() == signed_in.lower():
                self.state["home_account_id"] = account.get("home_account_id")
        self.state["msal"] = self._msal_cache.serialize()
        self._msal_cache.has_state_changed = False
        print(f"Signed in as {signed_in}; the tokens are stored encrypted.", file=out)
        return expires_in


def _pasted_response(line: str, state: str) -> dict[str, str]:
    """The redirect's query parameters from a pasted address, or the pasted code alone."""
    text = line.strip()
    if not text:
        raise OAuthError("nothing was pasted", "Run the sign-in again and paste the address.")
    if "code=" not in text and "error=" not in text:
        return {"code": text, "state": state}
    query = urlsplit(text).query if "?" in text else text.lstrip("#")
    params = {name: values[0] for name, values in parse_qs(query).items()}
    if "error" in params:
        codes = _codes(params.get("error_description", ""))
        raise OAuthError(
            f"Microsoft sign-in: {params['error']}",
            microsoft_advice(codes, params["error"]),
            f"AADSTS{codes[0]}" if codes else params["error"],
        )
    return params


def _codes(text: str) -> list[str]:
    return _AADSTS.findall(text)


def _unreachable(exc: requests.RequestException) -> IdentityProviderUnavailable:
    return IdentityProviderUnavailable(
        f"Microsoft sign-in service unreachable: {type(exc).__name__}: {exc}"
    )
