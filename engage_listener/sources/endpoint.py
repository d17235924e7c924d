"""Where and how a source connects to its mail server: what the IMAP and POP3 endpoints
share (each adds its protocol's limits).

Decisions:

* A module of `sources` that no source owns (see `listening`); the endpoints are built
  from a listener's configuration by `service.build`.
* Certificates are always checked (system CAs or CaFile), TLS 1.2 at least.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from engage_listener.config.model import DEFAULT_MAX_MESSAGE_SIZE
from engage_listener.observe.protolog import ProtocolLog

if TYPE_CHECKING:
    from engage_listener.oauth.provider import TokenProvider


@dataclass(frozen=True)
class MailEndpoint:
    """Where and how to connect; built from a listener's configuration by the app."""

    host: str
    port: int
    use_ssl: bool
    username: str
    password: str = field(repr=False)
    ca_file: str | None = None
    timeout: float = 30.0
    protolog_factory: Callable[[], ProtocolLog | None] = lambda: None
    # OAuth2: log in with SASL XOAUTH2 as `username` with its tokens (`password` unused).
    token_provider: TokenProvider | None = field(default=None, repr=False, compare=False)
    # UseSsl False without STARTTLS/STLS: log in anyway (AllowPlaintextLogin), else refuse.
    allow_plaintext_login: bool = False
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE  # MaxMessageSize: larger mail is not read

    @property
    def where(self) -> str:
        return f"{self.host}:{self.port}"

    def ssl_context(self) -> ssl.SSLContext:
        """Verifying context: certificates are always checked (system CAs or CaFile)."""
        context = ssl.create_default_context(cafile=self.ca_file)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        return context
