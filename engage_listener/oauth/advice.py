"""Identity-provider errors in plain words: what an operator should do about each.

Microsoft answers with AADSTS codes, Google with OAuth2 error names; the bare codes
mean nothing to the person reading the log at night, so each known one is mapped
to the fix. Nothing here may quote a secret: only codes and fixed sentences.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from engage_listener.config.auth import AuthConfig

LOGIN_AGAIN = "Sign in again with `engage-listener auth login LISTENER`."
# Where the tokens come from when Authority or TokenUri is not configured (the same
# defaults as oauth_ms and oauth_google, which this light module must not import).
MICROSOFT_AUTHORITY = "https://login.microsoftonline.com"
GOOGLE_TOKEN_URI = "https://oauth2.googleapis.com/token"  # noqa: S105 - a URL

_MICROSOFT = {
    "7000222": "The client secret has expired: create a new one in Entra ID (App "
    "registrations > Certificates & secrets) and put it in ClientSecret.",
    "7000215": "The client secret is wrong: copy the secret's Value (not its Secret ID) "
    "into ClientSecret.",
    "50194": "The app is registered for a single tenant: set TenantId to the directory "
    "(tenant) ID or domain of the app registration, not common or organizations.",
    "90002": "The tenant does not exist: check TenantId (and Authority for sovereign clouds).",
    "900023": "TenantId is not a valid tenant ID or domain name.",
    "65001": "The app has no consent for the mail permissions: an administrator must grant "
    "admin consent in Entra ID (App registrations > API permissions > Grant admin consent) "
    "for IMAP.AccessAsUser.All, POP.AccessAsUser.All and SMTP.Send (delegated) or "
    "IMAP.AccessAsApp, POP.AccessAsApp and SMTP.SendAsApp (app-only).",
    "700016": "The application was not found in the tenant: check ClientId and TenantId "
    "(the app must be registered in, or consented to by, that directory).",
    "7000218": "Device code sign-in needs a public client: enable 'Allow public client "
    "flows' in the app registration (Authentication), or configure a ClientSecret.",
    "700024": "The certificate assertion is outside its validity time: check this machine's clock.",
    "700027": "The certificate is not accepted: upload its public part to the app "
    "registration and check CertificateThumbprint.",
    "700023": "The certificate is not accepted: upload its public part to the app "
    "registration and check CertificateThumbprint.",
    "7000112": "The application is disabled in the tenant: an administrator must enable it.",
    "50057": "The user account is disabled: an administrator must enable it.",
    "50034": "The account does not exist in this tenant: check the account and TenantId.",
    "50076": "Multi-factor authentication or Conditional Access now requires a new sign-in: "
    + LOGIN_AGAIN,
    "50079": "Multi-factor authentication registration is required for the account: "
    "complete it, then " + LOGIN_AGAIN[0].lower() + LOGIN_AGAIN[1:],
    "53003": "A Conditional Access policy blocks this sign-in: exclude the account or the "
    "app from it, or allow this machine's location.",
    "70011": "The requested scope is invalid for this app: check the app's API permissions.",
    "500011": "Exchange Online is not available in this tenant (no resource principal): "
    "check TenantId and that the tenant has Exchange Online.",
}
_MICROSOFT_LOGIN_AGAIN = ("70000", "70008", "70043", "700082", "700084", "50173", "50078")
_GOOGLE = {
    "invalid_client": "ClientId or ClientSecret is wrong, or the OAuth client was deleted "
    "(Google Cloud console > APIs & Services > Credentials).",
    "unauthorized_client": "The service account's client ID has no domain-wide delegation for "
    "https://mail.google.com/: add it in the Admin console (Security > API controls > "
    "Domain-wide delegation).",
    "access_denied": "The consent was declined: " + LOGIN_AGAIN,
    "invalid_scope": "The scope https://mail.google.com/ is not allowed for this client: "
    "check the OAuth consent screen (or the domain-wide delegation) settings.",
    "admin_policy_enforced": "The Workspace administrator blocks this app: trust it in the "
    "Admin console (Security > API controls > App access control).",
}
_AADSTS = re.compile(r"AADSTS(\d+)")


_MICROSOFT_ERRORS = {
    "invalid_grant": "The sign-in has expired or was revoked: " + LOGIN_AGAIN,
    "interaction_required": "The sign-in has expired or was revoked: " + LOGIN_AGAIN,
    "authorization_declined": "The device code sign-in was declined: " + LOGIN_AGAIN,
    "expired_token": "The device code sign-in was not finished in time: " + LOGIN_AGAIN,
    "bad_verification_code": "The device code was not accepted: " + LOGIN_AGAIN,
    "invalid_client": "The client credentials were refused: check ClientId, ClientSecret "
    "or the certificate.",
    "unauthorized_client": "The app may not use this sign-in method: check the app registration.",
}


def microsoft_advice(codes: list[str], error: str = "") -> str:
    """The fix for Entra ID error codes (AADSTS numbers), or for a bare OAuth2 error."""
    for code in codes:
        if code in _MICROSOFT:
            return _MICROSOFT[code]
        if code in _MICROSOFT_LOGIN_AGAIN:
            return "The sign-in has expired or was revoked: " + LOGIN_AGAIN
    return _MICROSOFT_ERRORS.get(error, "")


def google_advice(error: str, description: str = "", service_account: bool = False) -> str:
    """The fix for a Google token endpoint error."""
    if error == "invalid_grant":
        if service_account:
            if "signature" in description.lower():
                return (
                    "The service account key was deleted or revoked: create a new key "
                    "and point ServiceAccountKeyFile at it."
                )
            return (
                "The service account cannot act as this mailbox: check that the mailbox "
                "(UserName) exists and that domain-wide delegation grants "
                "https://mail.google.com/ to the service account's client ID, and this "
                "machine's clock."
            )
        return (
            "The refresh token was revoked or has expired (password change, access "
            "removed, or the 7-day limit of an app in Testing mode): " + LOGIN_AGAIN
        )
    return _GOOGLE.get(error, "")


def refusal_advice(auth: AuthConfig, purpose: str) -> str:
    """What to check when the mail server refuses a freshly issued token."""
    service = {"imap": "IMAP", "pop3": "POP", "smtp": "authenticated SMTP"}.get(purpose, purpose)
    if purpose == "graph":
        return (
            "Microsoft Graph refused the token: check that the app registration has the "
            "Mail.ReadWrite permission (application permission with admin consent for app-only "
            "access) and that GraphEndpoint and Authority are of the same cloud."
        )
    if auth.type == "Google":
        return (
            f"Gmail refused the token: enable {service} for the mailbox (Gmail settings or the "
            "Admin console) and check that UserName is the mailbox the token is for."
        )
    if auth.flow == "client_credentials":
        grant = "Add-RecipientPermission (SendAs)" if purpose == "smtp" else "Add-MailboxPermission"
        return (
            "Exchange Online refused the app's token: register the app's service principal "
            f"in Exchange (New-ServicePrincipal), grant it the mailbox with {grant}, and "
            f"check that {service} is enabled for the mailbox (Set-CASMailbox)."
        )
    return (
        "Exchange Online refused the token: check that the signed-in user may open this "
        f"mailbox and that {service} is enabled for it (Set-CASMailbox); " + LOGIN_AGAIN
    )


def advice(error: Exception) -> str:
    """Plain advice for an identity-provider (or refused-token) error; '' when unknown."""
    own = getattr(error, "advice", "")
    if isinstance(own, str) and own:
        return own
    text = str(error)
    codes = _AADSTS.findall(text)
    if codes:
        return microsoft_advice(codes)
    for name in ("invalid_grant", *_GOOGLE):
        if name in text:
            return google_advice(name, text)
    if "Unable to get authority configuration" in text:
        return "The tenant was not found: check TenantId (and Authority for sovereign clouds)."
    return ""


def identity_provider_url(auth: AuthConfig) -> str:
    """Where an account's tokens come from, as configured (Authority and TenantId, TokenUri)."""
    if auth.type == "Google":
        return auth.token_uri or GOOGLE_TOKEN_URI
    return f"{(auth.authority or MICROSOFT_AUTHORITY).rstrip('/')}/{auth.tenant_id or ''}"


_UNREACHABLE = (  # (words in the error, why in plain words, what to check); first match wins
    (
        ("certificate_verify_failed", "certificate verify failed"),
        "its TLS certificate is not trusted",
        "set CaFile in Authentication to the PEM of the CA that signed the identity "
        "provider's certificate (that of a TLS-inspecting proxy, say)",
    ),
    (
        ("sslerror", "ssl:"),
        "the TLS handshake failed",
        "check that {setting} is an https:// address of the identity provider",
    ),
    (
        ("proxyerror", "unable to connect to proxy", "tunnel connection failed"),
        "the HTTPS proxy failed",
        "check the HTTPS_PROXY and NO_PROXY settings of the service",
    ),
    (
        (
            "name or service not known",
            "nameresolutionerror",
            "temporary failure in name",
            "nodename nor servname",
            "getaddrinfo failed",
            "no address associated",
        ),
        "its name cannot be resolved",
        "check {setting} and this machine's DNS settings",
    ),
    (
        ("connection refused",),
        "the connection was refused",
        "check {setting}, and that this machine may open outbound HTTPS connections to it "
        "(firewall, HTTPS_PROXY)",
    ),
    (
        ("timed out", "timeout"),
        "no answer in time",
        "a firewall may drop the traffic: allow outbound HTTPS to it, or set HTTPS_PROXY",
    ),
)


def unavailable_advice(auth: AuthConfig, text: str) -> tuple[str, str]:
    """(what happened, what to do) when the identity provider could not issue a token.

    `text` is an IdentityProviderUnavailable's: "... unreachable: ..." when no answer
    came at all, otherwise the provider's own temporary error (5xx, server_error).
    """
    url = identity_provider_url(auth)
    setting = "TokenUri" if auth.type == "Google" else "Authority and TenantId"
    if "unreachable" not in text:
        return (
            f"the identity provider at {url} is temporarily unavailable: {text}",
            "the trouble is at the identity provider, not in this configuration: try again "
            "later (the daemon retries by itself)",
        )
    lowered = text.lower()
    for words, why, what in _UNREACHABLE:
        if any(word in lowered for word in words):
            return (
                f"the identity provider at {url} could not be reached: {why}",
                what.format(setting=setting) + "; no token was sent to the mail server",
            )
    return (
        f"the identity provider at {url} could not be reached: {text[:300]}",
        f"check {setting}, and that this machine may open outbound HTTPS connections to it "
        "(firewall, HTTPS_PROXY); no token was sent to the mail server",
    )
