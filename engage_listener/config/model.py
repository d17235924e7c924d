"""The configuration as the daemon uses it: frozen dataclasses, each default defined once.

`config.load` builds these from the XML (and applies nothing but what the file says:
an absent element leaves the field's default here). Every name follows its XML element
(`SyncMaxWaitTime` is `sync_max_wait_time` wherever it is used).
"""

from __future__ import annotations

import datetime as dt
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from engage_listener.config.ack import AckConfig, AddressChoice
from engage_listener.config.auth import AuthConfig
from engage_listener.config.webhook import WebhookConfig

DEFAULT_STORE_PATH = Path("/var/lib/engage-listener/engage-listener.sqlite3")
DEFAULT_LEASE_SECONDS = 30  # <Store><LeaseSeconds>: several daemons on one PostgreSQL
DEFAULT_MAX_MESSAGE_SIZE = 157_286_400  # 150 MB: the largest mail Exchange Online accepts
DEFAULT_PROTOCOL_LOG_KEEP_DAYS = 14

DEFAULT_MAX_ATTEMPTS = 3  # failed tries of one mail before it is quarantined
DEFAULT_SYNC_MAX_WAIT_TIME = 60  # seconds a change waits for its batch
DEFAULT_SYNC_MAX_CHANGES_COUNT = 10  # changes that start a batch at once
DEFAULT_ROUTING_TIMEOUT = 10  # seconds a routing hook may take
DEFAULT_REOPEN_DAYS = 7  # a mail for a case closed fewer days ago reopens it
DEFAULT_POLL_SECONDS = 15  # Graph: seconds between two delta queries
DEFAULT_GRAPH_ENDPOINT = "https://graph.microsoft.com/v1.0"
DEFAULT_GRAPH_INPUT_FOLDER = "Inbox"  # Graph: the well-known name of the inbox


def default_workers() -> int:
    """Process/Workers when absent: at most one parse worker process per CPU, started as
    needed (mail.parse_pool)."""
    return os.cpu_count() or 1


FollowUpsFrom = Literal["Participants", "Anyone"]  # who may join a case by token or header
UnknownSender = Literal["CreateCustomer", "DefaultCustomer", "Quarantine"]
AutomaticMail = Literal["Ignore", "OpenCase"]  # Ignore: never opens a case
Protocol = Literal["imap", "pop3", "graph"]

RuleField = Literal["From", "To", "Cc", "Subject", "Body"]  # To: To, Cc and Delivered-To
RuleOperator = Literal["Contains", "Equals", "Regex", "Domain", "Exists"]
RULE_FIELDS: tuple[RuleField, ...] = ("From", "To", "Cc", "Subject", "Body")
RULE_OPERATORS: tuple[RuleOperator, ...] = ("Contains", "Equals", "Regex", "Domain", "Exists")


@dataclass(frozen=True)
class MatchConfig:
    """One `<Match>` of a rule: a field (or a header) and one operator with its value.

    `value` is the operator's attribute as written (trimmed); for Exists it is "true"
    or "false". Exactly one of `field` and `header` is set.
    """

    operator: RuleOperator
    value: str
    field: RuleField | None = None
    header: str | None = None  # a header name, e.g. X-Spam-Flag
    case_sensitive: bool = False
    source_line: int = 0


@dataclass(frozen=True)
class SetProcess:
    process: str


@dataclass(frozen=True)
class SetInbox:
    inbox: str


@dataclass(frozen=True)
class SetPriority:
    priority: int


@dataclass(frozen=True)
class AddTag:
    tag: str


@dataclass(frozen=True)
class NoAcknowledgement:
    """The mail gets no acknowledgement."""


@dataclass(frozen=True)
class Discard:
    """The mail is kept, marked ignored, no case; evaluation ends."""


@dataclass(frozen=True)
class Quarantine:
    """The mail is quarantined with this reason; evaluation ends."""

    reason: str


@dataclass(frozen=True)
class Stop:
    """No later rule is looked at."""


RuleAction = (
    SetProcess | SetInbox | SetPriority | AddTag | NoAcknowledgement | Discard | Quarantine | Stop
)


@dataclass(frozen=True)
class RuleConfig:
    """One `<Rule>`: when every match holds, its actions apply in document order."""

    name: str
    matches: tuple[MatchConfig, ...]
    actions: tuple[RuleAction, ...]
    source_line: int = 0


@dataclass(frozen=True)
class Secret:
    """A secret; repr() and str() mask it so a logged or printed config never leaks it."""

    _value: str = field(repr=False)

    def reveal(self) -> str:
        """Give the value; call it only where the secret is really used (the login)."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    def __str__(self) -> str:
        return "***"


@dataclass(frozen=True)
class ListenerConfig:
    """One ImapListener block, defaults applied."""

    id: str
    host: str
    port: int
    username: str
    password: Secret
    use_ssl: bool
    source_line: int
    input_folder: str = "INBOX"
    output_folder: str | None = None
    extract_attachments: bool = False
    sync_max_wait_time: int = DEFAULT_SYNC_MAX_WAIT_TIME
    sync_max_changes_count: int = DEFAULT_SYNC_MAX_CHANGES_COUNT
    protocol_log_file: str | None = None
    ca_file: Path | None = None
    enabled: bool = True
    case_process: str | None = None
    unknown_sender: UnknownSender = "CreateCustomer"
    default_customer_id: int | None = None
    automatic_mail: AutomaticMail = "Ignore"
    subject_prefixes: tuple[str, ...] = ()
    routing_hook: str | None = None
    routing_hook_line: int = 0
    routing_timeout: int = DEFAULT_ROUTING_TIMEOUT
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    error_folder: str | None = None
    acknowledgement: AckConfig | None = None
    protocol_log_bodies: bool = False
    protocol_log_max_size: int = 10 * 1024 * 1024
    protocol_log_keep: int = 5
    read_from_date: dt.date | None = None
    time_zone: str = "UTC"
    require_approval: bool = False
    protocol: Protocol = "imap"  # "pop3": a Pop3Listener block; "graph": a GraphListener
    leave_on_server: bool = False  # POP3 only
    authentication: AuthConfig | None = None  # None: the Password
    allow_plaintext_login: bool = False  # UseSsl False without STARTTLS/STLS may log in
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE  # larger mail: quarantined `oversize`
    follow_ups_from: FollowUpsFrom = "Participants"  # who may join a case by token/header
    protocol_log_keep_days: int = DEFAULT_PROTOCOL_LOG_KEEP_DAYS  # prune older log files
    rules: tuple[RuleConfig, ...] = ()  # the Rules block, in order (see cases.rules)
    customer_from: AddressChoice = "From"  # ReplyTo: the customer is found by Reply-To
    reopen_days: int = DEFAULT_REOPEN_DAYS  # ReopenDays: 0 never reopens a closed case
    poll_seconds: int = DEFAULT_POLL_SECONDS  # Graph only: how often delta is asked
    graph_endpoint: str = DEFAULT_GRAPH_ENDPOINT  # Graph only (national clouds, tests)
    webhook: WebhookConfig | None = None  # its own Webhook, else the file's (config.webhook)

    @property
    def graph_origin(self) -> str:
        """``https://host[:port]`` of GraphEndpoint: the resource Graph tokens are asked for
        (the daemon's and `auth login`'s alike, so a national cloud signs in for its own)."""
        parts = urlsplit(self.graph_endpoint)
        return f"{parts.scheme}://{parts.netloc}"


@dataclass(frozen=True)
class StoreConfig:
    """Where the case store lives: a SQLite file (`path`), or a PostgreSQL database (`url`,
    a libpq URL, with an optional `password` and `ca_file`; `lease_seconds`: how long a
    daemon's hold on a listener lasts, see service.coordinator_pg). `path` keeps its default when
    `url` is set, and is then unused."""

    path: Path
    url: str | None = None
    password: Secret | None = field(default=None, repr=False)
    ca_file: Path | None = None
    lease_seconds: int = DEFAULT_LEASE_SECONDS  # several daemons: take-over within this

    @property
    def kind(self) -> str:
        """The implementation's name in `store.open`: "postgres" or "sqlite"."""
        return "postgres" if self.url else "sqlite"

    @property
    def where(self) -> str:
        """The store for logs and messages: the path, or the URL with its password masked."""
        return mask_url(self.url) if self.url else str(self.path)


def mask_url(url: str) -> str:
    """A libpq URL with the password of its user part and any `password=` parameter
    replaced by ***: safe in logs and errors."""
    masked = re.sub(r"^([a-z]+://[^:/@?#]*:)[^/?#]*@", r"\1***@", url, flags=re.IGNORECASE)
    return re.sub(r"([?&]password=)[^&#]*", r"\1***", masked, flags=re.IGNORECASE)


@dataclass(frozen=True)
class MetricsConfig:
    """The optional Prometheus endpoint."""

    host: str
    port: int
    health_max_age: int = 900


@dataclass(frozen=True)
class Config:
    """The whole configuration file."""

    path: Path
    imap_listeners: tuple[ListenerConfig, ...]
    use_imap_listener: bool
    store: StoreConfig
    pop3_listeners: tuple[ListenerConfig, ...] = ()
    use_pop3_listener: bool = False
    graph_listeners: tuple[ListenerConfig, ...] = ()
    use_graph_listener: bool = False
    metrics: MetricsConfig | None = None
    # parse worker processes shared by every listener; 0: parse in the daemon's process
    workers: int = field(default_factory=default_workers)
    notices: tuple[str, ...] = ()  # warnings only the XML text shows (see config.cautions)
    webhook: WebhookConfig | None = None  # the top-level Webhook (listeners inherit it)

    @property
    def listeners(self) -> tuple[ListenerConfig, ...]:
        """Every listener block, IMAP, POP3 and Graph, in file order within each kind."""
        return self.imap_listeners + self.pop3_listeners + self.graph_listeners

    def enabled_listeners(self) -> tuple[ListenerConfig, ...]:
        """The listeners to run: a kind runs only while its Process/Use... flag is True."""
        imap = self.imap_listeners if self.use_imap_listener else ()
        pop3 = self.pop3_listeners if self.use_pop3_listener else ()
        graph = self.graph_listeners if self.use_graph_listener else ()
        return tuple(lst for lst in imap + pop3 + graph if lst.enabled)


def describe(listener: ListenerConfig) -> str:
    """One line for check-config; shows no secret."""
    lst = listener
    if lst.protocol == "graph":
        return _describe_graph(lst)
    target = f"{lst.output_folder} (move)" if lst.output_folder else "(delete)"
    if lst.protocol == "pop3":
        target = "(leave on server)" if lst.leave_on_server else "(delete)"
    kind = "POP3 " if lst.protocol == "pop3" else ""
    extras = [
        "attachments extracted," if lst.extract_attachments else "",
        f"CA {lst.ca_file}," if lst.ca_file else "",
        f"protocol log {lst.protocol_log_file}," if lst.protocol_log_file else "",
        f"{len(lst.rules)} rule(s)," if lst.rules else "",
        f"webhook {lst.webhook.url}," if lst.webhook else "",
    ]
    return " ".join(
        [
            f"{lst.id}: {kind}{lst.host}:{lst.port} {'TLS' if lst.use_ssl else 'plain'}",
            f"user={lst.username} {lst.input_folder} -> {target},",
            f"batch {lst.sync_max_changes_count} mails or {lst.sync_max_wait_time} s,",
            *filter(None, extras),
            "enabled" if lst.enabled else "disabled",
        ]
    )


def _describe_graph(lst: ListenerConfig) -> str:
    target = f"{lst.output_folder} (move)" if lst.output_folder else "Deleted Items (delete)"
    return " ".join(
        [
            f"{lst.id}: Graph {lst.graph_endpoint} mailbox={lst.username}",
            f"{lst.input_folder} -> {target},",
            f"delta every {lst.poll_seconds} s,",
            f"batch {lst.sync_max_changes_count} mails or {lst.sync_max_wait_time} s,",
            *(["attachments extracted,"] if lst.extract_attachments else []),
            *([f"protocol log {lst.protocol_log_file},"] if lst.protocol_log_file else []),
            *([f"{len(lst.rules)} rule(s),"] if lst.rules else []),
            *([f"webhook {lst.webhook.url},"] if lst.webhook else []),
            "enabled" if lst.enabled else "disabled",
        ]
    )


def oauth_logins(listener: ListenerConfig) -> list[tuple[str, AuthConfig, str, str]]:
    """(what, auth, username, purpose) of each OAuth2 account a listener uses.

    The listener's own mailbox (purpose imap or pop3) and its Acknowledgement SMTP
    account (purpose smtp), for `engage-listener auth login` and `auth status`.
    """
    found: list[tuple[str, AuthConfig, str, str]] = []
    auth = listener.authentication
    if auth is not None and auth.is_oauth:
        kind = {"pop3": "POP3", "graph": "Graph"}.get(listener.protocol, "IMAP")
        found.append((f"{listener.id} {kind}", auth, listener.username, listener.protocol))
    ack = listener.acknowledgement
    smtp = ack.smtp if ack is not None else None
    if smtp is not None and smtp.authentication is not None and smtp.authentication.is_oauth:
        found.append((f"{listener.id} SMTP", smtp.authentication, smtp.username or "", "smtp"))
    return found
