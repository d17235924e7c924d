"""Builds the concrete objects from the configuration: the one place that does.

Every outside thing a listener needs (its store, connection factory, clock, engine, hook,
protocol log, token provider, SMTP endpoints) is made here and passed in; `service.app`
runs what this builds. The configuration is already validated when it gets here.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from engage_listener.cases.ack import AckIdentity
from engage_listener.cases.engine import AckSettings, CaseEngine, EngineSettings
from engage_listener.cases.hooks import RoutingHook, load_hook
from engage_listener.cases.rules import listener_addresses
from engage_listener.clock import Clock
from engage_listener.config import secret_refs as secrets
from engage_listener.config.auth import AuthConfig
from engage_listener.config.model import Config, ListenerConfig
from engage_listener.errors import ConfigError, ConfigProblem, HookError
from engage_listener.intake.control import start_of_day
from engage_listener.oauth.provider import TokenProvider, provider_for
from engage_listener.oauth.token_cache import open_cache
from engage_listener.observe.logs import (
    get_logger,
    register_secret,
)
from engage_listener.observe.protolog import ProtocolLog, expand_path, log_file_problem, open_log
from engage_listener.sources.imap.listener import Listener, ListenerSettings
from engage_listener.sources.imap.session import ImapSession
from engage_listener.sources.imap.text import ImapEndpoint
from engage_listener.store.interface import Store

# For annotations only: what a plain `run --once` does not use (SMTP, metrics, POP3, the
# daemon's supervisor) is imported where it is used, to keep start-up short.
if TYPE_CHECKING:
    from email.message import EmailMessage

    from engage_listener.outbox.smtp import BeforeData, SmtpEndpoint
    from engage_listener.outbox.webhooks import WebhookEndpoint
    from engage_listener.sources.graph.listener import GraphListener
    from engage_listener.sources.listening import SourceListener
    from engage_listener.sources.pop3.listener import Pop3Listener
    from engage_listener.sources.pop3.session import Pop3Endpoint


def protolog_factory(cfg: ListenerConfig, suffix: str = "") -> Callable[[], ProtocolLog | None]:
    """Opens a connection's protocol log, if configured; `%listener%` is the listener's ID
    plus `suffix` ("-smtp" for its acknowledgements' SMTP sessions, a file of their own)."""
    pattern, name = cfg.protocol_log_file, cfg.id + suffix

    def protolog() -> ProtocolLog | None:
        if not pattern:
            return None
        return open_log(
            pattern,
            name,
            keep_days=cfg.protocol_log_keep_days,
            bodies=cfg.protocol_log_bodies,
            max_bytes=cfg.protocol_log_max_size,
            keep=cfg.protocol_log_keep,
        )

    return protolog


def endpoint_for(cfg: ListenerConfig) -> ImapEndpoint:
    """The IMAP endpoint of a listener, with its protocol log if configured."""
    protolog = protolog_factory(cfg)
    return ImapEndpoint(
        host=cfg.host,
        port=cfg.port,
        use_ssl=cfg.use_ssl,
        username=cfg.username,
        password=cfg.password.reveal(),
        ca_file=str(cfg.ca_file) if cfg.ca_file else None,
        protolog_factory=protolog,
        token_provider=token_provider(cfg.authentication, cfg.username, "imap"),
        allow_plaintext_login=cfg.allow_plaintext_login,
        max_message_size=cfg.max_message_size,
    )


def token_provider(
    auth: AuthConfig | None, username: str, purpose: str, resource: str | None = None
) -> TokenProvider | None:
    """OAuth2 tokens for one account (None for passwords); one cache per process."""
    if auth is None or not auth.is_oauth:
        return None
    cache = open_cache(auth.key_path or secrets.default_key_path())
    return provider_for(auth, username, cache=cache, purpose=purpose, resource=resource)


def check_log_directories(config: Config) -> None:
    """Start-up (and reload) check: every protocol log file can be opened for appending."""
    problems: list[ConfigProblem] = []
    for cfg in config.enabled_listeners():
        if not cfg.protocol_log_file:
            continue
        message = log_file_problem(expand_path(cfg.protocol_log_file, cfg.id))
        if message is not None:
            problems.append(
                ConfigProblem(str(config.path), cfg.source_line, "ProtocolLogFile", message)
            )
    if problems:
        raise ConfigError(problems)


def load_hooks(config: Config) -> dict[str, RoutingHook]:
    """Load every listener's routing hook now: a wrong path is a configuration error."""
    hooks: dict[str, RoutingHook] = {}
    problems: list[ConfigProblem] = []
    for cfg in config.listeners:
        if cfg.routing_hook is None:
            continue
        try:
            hooks[cfg.id] = load_hook(
                cfg.routing_hook,
                config.path.absolute().parent,
                float(cfg.routing_timeout),
                config.store.kind,
            )
        except HookError as exc:
            problems.append(
                ConfigProblem(str(config.path), cfg.routing_hook_line, "RoutingHook", str(exc))
            )
    if problems:
        raise ConfigError(problems)
    return hooks


def ack_settings(cfg: ListenerConfig) -> AckSettings | None:
    ack = cfg.acknowledgement
    if ack is None or not ack.enabled:
        return None
    identity = AckIdentity(ack.from_address, ack.from_name, ack.reply_to)
    return AckSettings(
        identity,
        ack.template,
        ack.own_addresses,
        ack.on_follow_ups,
        max_per_recipient_per_hour=ack.max_per_recipient_per_hour,
        max_per_hour=ack.max_per_hour,
        require_authenticated=ack.require_authenticated,
        recipient=ack.recipient,
    )


def smtp_endpoints(config: Config, *, enabled_only: bool = True) -> dict[str, SmtpEndpoint]:
    """The SMTP account of every listener that acknowledges, by listener ID."""
    endpoints: dict[str, SmtpEndpoint] = {}
    for cfg in config.enabled_listeners() if enabled_only else config.listeners:
        ack = cfg.acknowledgement
        if ack is None or not ack.enabled:
            continue
        from engage_listener.outbox.smtp import SmtpEndpoint  # noqa: PLC0415 - start-up time: aiosmtplib when acking

        smtp = ack.smtp
        if smtp.password:
            register_secret(smtp.password)
        endpoints[cfg.id] = SmtpEndpoint(
            host=smtp.host,
            port=smtp.port,
            security=smtp.security,
            username=smtp.username,
            password=smtp.password,
            ca_file=str(smtp.ca_file) if smtp.ca_file else None,
            token_provider=token_provider(smtp.authentication, smtp.username or "", "smtp"),
            protolog_factory=protolog_factory(cfg, "-smtp"),
            allow_plaintext_login=smtp.allow_plaintext_login,
        )
    return endpoints


def webhook_endpoints(config: Config) -> dict[str, WebhookEndpoint]:
    """The Webhook of every enabled listener that has one (its own or the file's)."""
    from engage_listener.outbox.webhooks import WebhookEndpoint  # noqa: PLC0415 - start-up time

    endpoints: dict[str, WebhookEndpoint] = {}
    for cfg in config.enabled_listeners():
        hook = cfg.webhook
        if hook is None:
            continue
        register_secret(hook.secret)
        endpoints[cfg.id] = WebhookEndpoint(
            hook.url,
            hook.secret,
            str(hook.ca_file) if hook.ca_file else None,
            float(hook.timeout),
            hook.max_attempts,
        )
    return endpoints


async def send_message(
    endpoint: SmtpEndpoint, message: EmailMessage, *, before_data: BeforeData
) -> str:
    """`smtp.send_message`, imported at the first acknowledgement sent (start-up time)."""
    from engage_listener.outbox.smtp import send_message  # noqa: PLC0415

    return await send_message(endpoint, message, before_data=before_data)


def engine_settings(cfg: ListenerConfig, hook: RoutingHook | None) -> EngineSettings:
    """The case engine's settings of a listener; its Rules are applied before the hook."""
    return EngineSettings(
        listener=cfg.id,
        extract_attachments=cfg.extract_attachments,
        process=cfg.case_process,
        unknown_sender=cfg.unknown_sender,
        default_customer_id=cfg.default_customer_id,
        automatic_mail=cfg.automatic_mail,
        subject_prefixes=cfg.subject_prefixes,
        hook=hook,
        ack=ack_settings(cfg),
        require_approval=cfg.require_approval,
        follow_ups_from=cfg.follow_ups_from,
        rules=cfg.rules,
        own_addresses=listener_addresses(cfg),
        customer_from=cfg.customer_from,
        webhook_events=cfg.webhook.events if cfg.webhook else (),
        reopen_days=cfg.reopen_days,
    )


ListenerT = TypeVar("ListenerT", bound="SourceListener[Any, Any]")


def read_from(cfg: ListenerConfig) -> dt.datetime | None:
    """ReadFromDate at 00:00 in the listener's TimeZone, if set."""
    return start_of_day(cfg.read_from_date, cfg.time_zone) if cfg.read_from_date else None


def assemble(
    kind: type[ListenerT],
    settings: object,
    connect: object,
    cfg: ListenerConfig,
    parts: tuple[Store, Clock, asyncio.Event],
    hook: RoutingHook | None,
    ack_queued: asyncio.Event | None,
) -> ListenerT:
    """A listener of `kind` on `settings` and `connect`, with the listener's case engine:
    what every source's builder ends with. `parts`: the store, the clock, the stop event."""
    store, clock, stop = parts
    return kind(
        settings,
        connect=connect,
        store=store,
        handler=CaseEngine(store, engine_settings(cfg, hook), ack_queued),
        clock=clock,
        stop=stop,
        log=get_logger(listener=cfg.id),
    )


def build_listener(
    cfg: ListenerConfig,
    store: Store,
    clock: Clock,
    stop: asyncio.Event,
    hook: RoutingHook | None = None,
    ack_queued: asyncio.Event | None = None,
) -> Listener:
    """One IMAP listener with its real connection factory and case engine."""
    register_secret(cfg.password.reveal())
    endpoint = endpoint_for(cfg)

    async def connect() -> ImapSession:
        return await ImapSession.open(endpoint)

    settings = ListenerSettings(
        id=cfg.id,
        input_folder=cfg.input_folder,
        output_folder=cfg.output_folder,
        sync_max_wait_time=float(cfg.sync_max_wait_time),
        sync_max_changes_count=cfg.sync_max_changes_count,
        error_folder=cfg.error_folder,
        max_attempts=cfg.max_attempts,
        read_from=read_from(cfg),
        max_message_size=cfg.max_message_size,
    )
    return assemble(Listener, settings, connect, cfg, (store, clock, stop), hook, ack_queued)


def pop3_endpoint_for(cfg: ListenerConfig) -> Pop3Endpoint:
    """The same host, credentials, CA and protocol log settings as an IMAP endpoint."""
    from engage_listener.sources.pop3.session import Pop3Endpoint  # noqa: PLC0415 - start-up time

    imap = endpoint_for(cfg)
    return Pop3Endpoint(
        cfg.host,
        cfg.port,
        cfg.use_ssl,
        cfg.username,
        imap.password,
        imap.ca_file,
        protolog_factory=imap.protolog_factory,
        token_provider=token_provider(cfg.authentication, cfg.username, "pop3"),
        allow_plaintext_login=cfg.allow_plaintext_login,
        max_message_size=cfg.max_message_size,
    )


def build_pop3_listener(
    cfg: ListenerConfig,
    store: Store,
    clock: Clock,
    stop: asyncio.Event,
    hook: RoutingHook | None = None,
    ack_queued: asyncio.Event | None = None,
) -> Pop3Listener:
    """One POP3 listener; the same engine and ledger, polling instead of IDLE."""
    from engage_listener.sources.pop3.listener import Pop3Listener, Pop3Settings  # noqa: PLC0415
    from engage_listener.sources.pop3.session import Pop3Session  # noqa: PLC0415 - start-up time

    register_secret(cfg.password.reveal())
    endpoint = pop3_endpoint_for(cfg)

    async def connect() -> Pop3Session:
        return await Pop3Session.open(endpoint)

    settings = Pop3Settings(
        cfg.id,
        float(cfg.sync_max_wait_time),
        cfg.sync_max_changes_count,
        cfg.leave_on_server,
        cfg.max_attempts,
        read_from=read_from(cfg),
    )
    return assemble(Pop3Listener, settings, connect, cfg, (store, clock, stop), hook, ack_queued)


def build_any(
    cfg: ListenerConfig,
    store: Store,
    clock: Clock,
    stop: asyncio.Event,
    hook: RoutingHook | None = None,
    ack_queued: asyncio.Event | None = None,
) -> Listener | Pop3Listener | GraphListener:
    """The right kind of listener for a block."""
    if cfg.protocol == "graph":
        from engage_listener.service.build_graph import build_graph_listener  # noqa: PLC0415

        return build_graph_listener(cfg, store, clock, stop, hook, ack_queued)
    build = build_pop3_listener if cfg.protocol == "pop3" else build_listener
    return build(cfg, store, clock, stop, hook, ack_queued)
