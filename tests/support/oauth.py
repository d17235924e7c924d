"""OAuth2 mail accounts against the test identity provider and Dovecot's oauth2 passdb."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from devkit.dovecot import DovecotSandbox
from engage_listener.config import secret_refs as engage_secrets
from engage_listener.oauth.provider import provider_for
from engage_listener.oauth.token_cache import TokenCache
from engage_listener.observe.protolog import ProtocolLog
from engage_listener.sources.imap.text import ImapEndpoint
from engage_listener.sources.pop3.session import Pop3Endpoint
from tests.support.config_xml import DONE, NEW, block, block_element, config_text
from tests.support.servers.oauth_server import OAuthTestServer, ms_auth

SECRET = "mail-app-secret-0123456789"


@dataclasses.dataclass
class Account:
    """A mailbox with its own app-only registration, token cache and protocol log."""

    user: str
    cache: TokenCache
    key_file: Path
    protolog: Path

    def provider(self, idp: OAuthTestServer, purpose: str) -> object:
        auth = ms_auth(idp, self.key_file, client_id=f"app-{self.user}", client_secret=SECRET)
        return provider_for(auth, self.user, cache=self.cache, purpose=purpose)


def microsoft_config_xml(
    dovecot: DovecotSandbox, idp: OAuthTestServer, account: Account, client_id: str = ""
) -> str:
    """A whole configuration: one Microsoft OAuth2 listener for `account`, its client
    secret encrypted with the account's key (the app `app-<user>` unless `client_id`)."""
    enc = engage_secrets.encrypt(SECRET, engage_secrets.load_key(account.key_file))
    authentication = block_element(
        "Authentication",
        {
            "Type": "Microsoft",
            "TenantId": "tenant-a",
            "ClientId": client_id or f"app-{account.user}",
            "ClientSecret": enc,
            "Authority": idp.authority,
            "CaFile": str(idp.ca_file),
        },
    )
    listener = block(
        "ImapListener",
        "O365",
        {
            "HostName": dovecot.host,
            "Port": str(dovecot.imap_port),
            "UserName": account.user,
            "UseSsl": "False",
            "CaFile": str(dovecot.ca_file),
            "InputFolder": NEW,
            "OutputFolder": DONE,
        },
        authentication,
    )
    return config_text(listener, store="cases.sqlite3", key_file=account.key_file)


def imap_endpoint(dovecot: DovecotSandbox, account: Account, idp: OAuthTestServer) -> ImapEndpoint:
    """The account's IMAP endpoint on the OAuth Dovecot (XOAUTH2, STARTTLS)."""
    return ImapEndpoint(
        host=dovecot.host,
        port=dovecot.imap_port,
        use_ssl=False,
        username=account.user,
        password="",
        ca_file=str(dovecot.ca_file),
        timeout=10.0,
        protolog_factory=lambda: ProtocolLog(account.protolog),
        token_provider=account.provider(idp, "imap"),  # type: ignore[arg-type]
    )


def pop3_endpoint(dovecot: DovecotSandbox, account: Account, idp: OAuthTestServer) -> Pop3Endpoint:
    """The account's POP3 endpoint on the OAuth Dovecot (XOAUTH2)."""
    return Pop3Endpoint(
        dovecot.host,
        dovecot.pop3_port,
        False,
        account.user,
        "",
        str(dovecot.ca_file),
        10.0,
        protolog_factory=lambda: ProtocolLog(account.protolog),
        token_provider=account.provider(idp, "pop3"),  # type: ignore[arg-type]
    )


def assert_clean(text: str, idp: OAuthTestServer) -> None:
    """No token the provider issued and no client secret appears in `text`."""
    for secret in [*idp.issued, SECRET]:
        assert secret not in text


def last_token(idp: OAuthTestServer, user: str) -> str:
    """The access token the provider issued last to `user`."""
    with idp.lock:
        return [t for t, (owner, _) in idp.state.access.items() if owner == user][-1]
