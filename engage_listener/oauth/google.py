"""Google with google-auth: a service account with domain-wide delegation, or an installed app.

The service account signs a JWT for the mailbox (its ``subject``) and needs no
sign-in. The installed app needs a refresh token, obtained once by `auth login`:
the consent URL is printed, the operator allows access in any browser and pastes
back the address it was sent to (``http://localhost/?code=...``) or just the
code; PKCE and a state value protect that exchange. A refresh token Google
rotates is stored before the new access token is handed out.
"""

from __future__ import annotations

import base64
import datetime as dt
import functools
import hashlib
import json
import secrets
from typing import Any, TextIO
from urllib.parse import parse_qs, urlencode, urlsplit

import google.auth.exceptions
import google.auth.transport.requests
import google.oauth2.credentials
import requests
from google.oauth2 import service_account

from engage_listener.oauth.advice import LOGIN_AGAIN, google_advice
from engage_listener.oauth.provider import (
    Account,
    IdentityProviderUnavailable,
    OAuthError,
    http_session,
)
from engage_listener.observe.logs import register_secret

DEFAULT_TOKEN_URI = "https://oauth2.googleapis.com/token"  # noqa: S105 - a URL
AUTH_URI = "https://accounts.google.com/o/oauth2/v2/auth"
HTTP_TIMEOUT = 30


class GoogleAccount(Account):
    """One mailbox of Google Workspace or Gmail."""

    @property
    def _service_account(self) -> bool:
        return self.auth.flow == "service_account"

    def _request(self) -> Any:
        session = http_session(self.auth.ca_file, HTTP_TIMEOUT)
        request = google.auth.transport.requests.Request(session)
        return functools.partial(request, timeout=HTTP_TIMEOUT)

    def _token_uri(self) -> str:
        return self.auth.token_uri or DEFAULT_TOKEN_URI

    def _fetch(self, scopes: list[str], force: bool) -> tuple[str, float, bool]:
        try:
            if self._service_account:
                credentials = self._delegated(scopes)
                credentials.refresh(self._request())
            else:
                refresh_token = self.state.get("refresh_token")
                if not refresh_token:
                    raise OAuthError(f"{self.username}: no Google sign-in yet", LOGIN_AGAIN)
                credentials = google.oauth2.credentials.Credentials(  # type: ignore[no-untyped-call]
                    None,
                    refresh_token=refresh_token,
                    token_uri=self._token_uri(),
                    client_id=self.auth.client_id,
                    client_secret=self.auth.client_secret,
                    scopes=scopes,
                )
                credentials.refresh(self._request())  # type: ignore[no-untyped-call]
                rotated = credentials.refresh_token
                if rotated and rotated != refresh_token:
                    self.state["refresh_token"] = rotated
                    self._save(last_rotation=self.now())
        except google.auth.exceptions.RefreshError as exc:
            raise self._error(exc) from None
        except (google.auth.exceptions.TransportError, requests.RequestException) as exc:
            raise IdentityProviderUnavailable(f"Google token endpoint unreachable: {exc}") from None
        return str(credentials.token), _seconds_left(credentials.expiry), True

    def _delegated(self, scopes: list[str]) -> Any:
        path = self.auth.service_account_key_file
        try:
            info = json.loads(path.read_text(encoding="utf-8")) if path else None
        except (OSError, ValueError) as exc:
            raise OAuthError(f"cannot read the service account key {path}: {exc}") from None
        if not isinstance(info, dict):
            raise OAuthError(f"{path} is not a service account key")
        if self.auth.token_uri:
            info["token_uri"] = self.auth.token_uri
        try:
            return service_account.Credentials.from_service_account_info(  # type: ignore[no-untyped-call]
                info, scopes=scopes, subject=self.username
            )
        except (ValueError, KeyError) as exc:
            raise OAuthError(f"{path} is not a usable service account key: {exc}") from None

    def _error(self, exc: google.auth.exceptions.RefreshError) -> Exception:
        data = exc.args[1] if len(exc.args) > 1 and isinstance(exc.args[1], dict) else {}
        error = str(data.get("error") or str(exc.args[0] if exc.args else "").split(":")[0])
        description = str(data.get("error_description", ""))[:200]
        if getattr(exc, "retryable", False):
            return IdentityProviderUnavailable(f"Google token endpoint: {error} {description}")
        return OAuthError(
            f"Google sign-in for {self.username} failed ({error}"
            + (f": {description})" if description else ")"),
            google_advice(error, description, self._service_account),
            error,
        )

    # ----- sign-in ----------------------------------------------------------------------
    def _sign_in(self, scopes: list[str], out: TextIO, inp: TextIO, device_code: bool) -> float:
        del device_code  # Google's installed apps have no device code flow for Gmail
        if self._service_account:
            _token, expires_in, _fresh = self._fetch(scopes, True)
            print(f"Service account access to {self.username} works (no sign-in needed).", file=out)
            return expires_in
        verifier = secrets.token_urlsafe(64)
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
        state = secrets.token_urlsafe(16)
        query = {
            "client_id": self.auth.client_id,
            "redirect_uri": self.auth.redirect_uri,
            "response_type": "code",
            "scope": " ".join(scopes),
            "access_type": "offline",
            "prompt": "consent",
            "login_hint": self.username,
            "state": state,
            "code_challenge": challenge.decode().rstrip("="),
            "code_challenge_method": "S256",
        }
        print(f"1. Open this address in a browser and sign in as {self.username}:", file=out)
        print(f"   {AUTH_URI}?{urlencode(query)}", file=out)
        print(
            f"2. Allow access. The browser then goes to {self.auth.redirect_uri}/?...code=...",
            file=out,
        )
        print("   and shows an error page: that is expected.", file=out)
        print("3. Paste that whole address (or only the code) here and press Enter:", file=out)
        out.flush()
        code = _pasted_code(inp.readline(), state)
        return self._exchange(code, verifier)

    def _exchange(self, code: str, verifier: str) -> float:
        body = {
            "grant_type": "authorization_code",
            "code": code,
            "client_id": self.auth.client_id,
            "client_secret": self.auth.client_secret,
            "redirect_uri": self.auth.redirect_uri,
            "code_verifier": verifier,
        }
        try:
            response = self._request()(
                url=self._token_uri(),
                method="POST",
                body=urlencode(body).encode(),
                headers={"Content-Type": "application/x-www-form-urlencoded"},
            )
        except (google.auth.exceptions.TransportError, requests.RequestException) as exc:
            raise IdentityProviderUnavailable(f"Google token endpoint unreachable: {exc}") from None
        try:
            data = json.loads(response.data.decode("utf-8"))
        except ValueError:
            data = {}
        for field in ("access_token", "refresh_token", "id_token"):
            if isinstance(data.get(field), str):
                register_secret(data[field])  # the moment the provider returns them
        if response.status != 200 or "access_token" not in data:
            error = google.auth.exceptions.RefreshError(  # type: ignore[no-untyped-call]
                str(data.get("error")), data
            )
            raise self._error(error)
        if not data.get("refresh_token"):
            raise OAuthError(
                "Google returned no refresh token",
                "Remove the app's access at https://myaccount.google.com/permissions, then "
                + LOGIN_AGAIN[0].lower()
                + LOGIN_AGAIN[1:],
            )
        self.state["refresh_token"] = data["refresh_token"]
        return float(data.get("expires_in", 3600))


def _pasted_code(line: str, state: str) -> str:
    """The authorization code from a pasted redirect address, or the pasted code itself."""
    text = line.strip()
    if not text:
        raise OAuthError("nothing was pasted", "Run the sign-in again and paste the address.")
    if "code=" not in text and "error=" not in text:
        return text
    params = parse_qs(urlsplit(text).query if "?" in text else text)
    if "error" in params:
        error = params["error"][0]
        raise OAuthError(f"Google sign-in: {error}", google_advice(error), error)
    if params.get("state", [state])[0] != state:
        raise OAuthError("the pasted address belongs to another sign-in attempt", LOGIN_AGAIN)
    return params["code"][0]


def _seconds_left(expiry: dt.datetime | None) -> float:
    if expiry is None:
        return 3600.0
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)  # google-auth uses naive UTC
    return max(0.0, (expiry - now).total_seconds())
