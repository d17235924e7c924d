"""test-connection with OAuth2: tell an identity provider's failure from a mail server's.

A login needs a token first; when the identity provider refuses or cannot be reached,
the login step must say so, with `oauth_advice`'s plain words, not blame the server.
"""

from __future__ import annotations

import dataclasses
from typing import TypeVar

from engage_listener.config.auth import AuthConfig
from engage_listener.oauth.advice import advice, identity_provider_url, unavailable_advice
from engage_listener.oauth.provider import IdentityProviderUnavailable, OAuthError, TokenProvider
from engage_listener.outbox.smtp import SmtpEndpoint
from engage_listener.sources.imap.text import ImapEndpoint
from engage_listener.sources.pop3.session import Pop3Endpoint

_E = TypeVar("_E", ImapEndpoint, Pop3Endpoint, SmtpEndpoint)


class Watched:
    """A token provider that remembers the identity provider's failure.

    The protocol modules may wrap it (SMTP turns an unreachable provider into a
    temporary SMTP error), so the report asks here what really went wrong.
    """

    def __init__(self, inner: TokenProvider) -> None:
        self.inner = inner
        self.error: OAuthError | IdentityProviderUnavailable | None = None
        auth = getattr(getattr(inner, "account", None), "auth", None)
        self.auth = auth if isinstance(auth, AuthConfig) else None

    async def token(self, *, force_refresh: bool = False) -> str:
        try:
            return await self.inner.token(force_refresh=force_refresh)
        except (OAuthError, IdentityProviderUnavailable) as exc:
            self.error = exc
            raise

    @property
    def refusal_advice(self) -> str:
        """What to check when the mail server refuses a token (read by the protocols)."""
        return str(getattr(self.inner, "refusal_advice", ""))


def watched(ep: _E | None) -> _E | None:
    if ep is None or ep.token_provider is None or isinstance(ep.token_provider, Watched):
        return ep
    return dataclasses.replace(ep, token_provider=Watched(ep.token_provider))


def without(text: str, advice_text: str) -> str:
    """`text` without the advice the exception appended to it (the hint carries it)."""
    if advice_text and text.endswith(advice_text):
        return text[: -len(advice_text)].rstrip(" .") or text
    return text


def provider_failure(exc: Exception, auth: AuthConfig | None) -> tuple[str, str]:
    """(detail, hint) for a login that never reached the mail server: no token."""
    if isinstance(exc, IdentityProviderUnavailable):
        if auth is not None:
            return unavailable_advice(auth, str(exc))
        hint = "check the Authentication settings and this machine's outbound HTTPS access"
        return f"the identity provider could not be used: {exc}", hint
    fix = advice(exc)
    text = without(str(exc), fix)
    code = getattr(exc, "code", "")
    if code:  # the identity provider answered, and refused
        where = f" at {identity_provider_url(auth)}" if auth is not None else ""
        detail = f"the identity provider{where} issued no token: {text}"
        hint = fix or (
            "the identity provider refused the credentials: check TenantId, ClientId and "
            "ClientSecret (or the certificate) in Authentication with its administrator"
        )
        return detail, hint
    return f"no OAuth2 token: {text}", fix or "check the Authentication settings named above"
