"""A listener's case rules as the engine reads them (`EngineSettings`), built by
`service.build` from the listener's configuration.

Decisions: apart from `engine` for size; `engine` re-exports the name, which tests and
the builder import from there.
"""

from __future__ import annotations

from dataclasses import dataclass

from engage_listener.cases.acknowledging import AckSettings
from engage_listener.cases.hooks import RoutingHook
from engage_listener.config.ack import AddressChoice
from engage_listener.config.model import (
    DEFAULT_REOPEN_DAYS,
    AutomaticMail,
    FollowUpsFrom,
    RuleConfig,
    UnknownSender,
)
from engage_listener.config.webhook import WebhookEventName


@dataclass(frozen=True)
class EngineSettings:
    """Per-listener case rules, from the listener's configuration."""

    listener: str
    extract_attachments: bool
    process: str | None = None
    unknown_sender: UnknownSender = "CreateCustomer"
    default_customer_id: int | None = None
    automatic_mail: AutomaticMail = "Ignore"  # Ignore: never opens a case
    subject_prefixes: tuple[str, ...] = ()
    hook: RoutingHook | None = None
    ack: AckSettings | None = None
    require_approval: bool = False
    follow_ups_from: FollowUpsFrom = "Participants"  # see follow_ups
    rules: tuple[RuleConfig, ...] = ()  # applied before the hook (see routing)
    own_addresses: tuple[str, ...] = ()  # the listener's (cases.rules.listener_addresses)
    customer_from: AddressChoice = "From"  # see addresses
    webhook_events: tuple[WebhookEventName, ...] = ()  # the Webhook's Events (cases.webhooks)
    reopen_days: int = DEFAULT_REOPEN_DAYS  # a mail for a case closed since fewer reopens it

    @property
    def all_own_addresses(self) -> tuple[str, ...]:
        """The listener's own addresses and its acknowledgement's."""
        ack_own = self.ack.own_addresses if self.ack is not None else ()
        return (*self.own_addresses, *ack_own)

    @property
    def uses_reply_to(self) -> bool:
        """CustomerFrom or Recipient is ReplyTo (see addresses)."""
        recipient = self.ack.recipient if self.ack is not None else "From"
        return "ReplyTo" in (self.customer_from, recipient)
