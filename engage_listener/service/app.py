"""Builds the concrete objects and runs them: the only place that does either.

Like uvicorn's server module: the configuration is already validated when it
gets here; this module wires the store, connection factories, engines and
listeners together, installs the signal handlers (which only set an event) and
waits for the listeners to finish.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from engage_listener.cases.ack import AckIdentity
from engage_listener.cases.engine import AckSettings, CaseEngine, EngineSettings
from engage_listener.cases.hooks import RoutingHook, load_hook
from engage_listener.clock import Clock, SystemClock
from engage_listener.config import secret_refs as secrets
from engage_listener.config.auth import AuthConfig
from engage_listener.config.cautions import config_warnings
from engage_listener.config.load import load_config
from engage_listener.config.model import Config, ListenerConfig
from engage_listener.errors import ConfigError, ConfigProblem, EngageError, HookError
from engage_listener.intake.control import start_of_day
from engage_listener.intake.retry import backoff
from engage_listener.mail.parse_pool import close_shared as close_parse_pool
from engage_listener.mail.parse_pool import shared as parse_pool
from engage_listener.oauth.provider import TokenProvider, provider_for
from engage_listener.oauth.token_cache import open_cache
from engage_listener.observe.logs import get_logger, install_loop_exception_handler, register_secret
from engage_listener.observe.protolog import ProtocolLog, expand_path, log_file_problem, open_log
from engage_listener.outbox.delivery import OutboxSender
from engage_listener.service.memory import one_malloc_arena
from engage_listener.sources.imap.listener import Listener, ListenerSettings
from engage_listener.sources.imap.session import ImapSession
from engage_listener.sources.imap.text import ImapEndpoint
from engage_listener.store.interface import Store
from engage_listener.store.open import build_store

# For annotations only: what a plain `run --once` does not use (SMTP, metrics, POP3, the
# daemon's supervisor) is imported where it is used, to keep start-up short.
if TYPE_CHECKING:
    from email.message import EmailMessage

    from engage_listener.observe.metrics import MetricsServer
    from engage_listener.observe.status import ListenerStatus
    from engage_listener.outbox.smtp import BeforeData, SmtpEndpoint
    from engage_listener.service.supervisor import Supervisor
    from engage_listener.sources.pop3.listener import Pop3Listener
    from engage_listener.sources.pop3.session import Pop3Endpoint

SHUTDOWN_GRACE = 6.0  # seconds for listeners to finish the mail in hand


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


def token_provider(auth: AuthConfig | None, username: str, purpose: str) -> TokenProvider | None:
    """OAuth2 tokens for one account (None for passwords); one cache per process."""
    if auth is None or not auth.is_oauth:
        return None
    cache = open_cache(auth.key_path or secrets.default_key_path())
    return provider_for(auth, username, cache=cache, purpose=purpose)


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
                cfg.routing_hook, config.path.absolute().parent, float(cfg.routing_timeout)
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


async def _send_message(
    endpoint: SmtpEndpoint, message: EmailMessage, *, before_data: BeforeData
) -> str:
    """`smtp.send_message`, imported at the first acknowledgement sent (start-up time)."""
    from engage_listener.outbox.smtp import send_message  # noqa: PLC0415

    return await send_message(endpoint, message, before_data=before_data)


def engine_settings(cfg: ListenerConfig, hook: RoutingHook | None) -> EngineSettings:
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
    engine = CaseEngine(store, engine_settings(cfg, hook), ack_queued)

    async def connect() -> ImapSession:
        return await ImapSession.open(endpoint)

    settings = ListenerSettings(
        id=cfg.id,
        input_folder=cfg.input_folder,
        output_folder=cfg.output_folder,
        max_wait=float(cfg.sync_max_wait_time),
        max_changes=cfg.sync_max_changes_count,
        error_folder=cfg.error_folder,
        max_attempts=cfg.max_attempts,
        read_from=start_of_day(cfg.read_from_date, cfg.time_zone) if cfg.read_from_date else None,
        max_message_size=cfg.max_message_size,
    )
    return Listener(
        settings,
        connect=connect,
        store=store,
        handler=engine,
        clock=clock,
        stop=stop,
        log=get_logger(listener=cfg.id),
    )


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
    )
    engine = CaseEngine(store, engine_settings(cfg, hook), ack_queued)
    return Pop3Listener(
        settings,
        connect=connect,
        store=store,
        handler=engine,
        clock=clock,
        stop=stop,
        log=get_logger(listener=cfg.id),
    )


def build_any(
    cfg: ListenerConfig,
    store: Store,
    clock: Clock,
    stop: asyncio.Event,
    hook: RoutingHook | None = None,
    ack_queued: asyncio.Event | None = None,
) -> Listener | Pop3Listener:
    """The right kind of listener for a block."""
    build = build_pop3_listener if cfg.protocol == "pop3" else build_listener
    return build(cfg, store, clock, stop, hook, ack_queued)


async def run(config: Config, *, once: bool = False) -> int:
    """The daemon (or one pass with `once`); returns the process exit code."""
    one_malloc_arena()
    install_loop_exception_handler()  # asyncio's reports go through the secret scrubber
    log = get_logger()
    listeners_cfg = config.enabled_listeners()
    for warning in config_warnings(config):
        log.warning("config_warning", message=warning)
    hooks = load_hooks(config)
    check_log_directories(config)
    if not listeners_cfg:
        log.error(
            "no_listeners", message="no enabled listener: nothing to do", config=str(config.path)
        )
        return 1
    store = build_store(config.store)
    try:
        await store.open()
    except EngageError as exc:
        log.error("store_error", error=str(exc))
        return 1
    stop, ack_queued = asyncio.Event(), asyncio.Event()
    sender = OutboxSender(
        store,
        smtp_endpoints(config),
        _send_message,
        wake=ack_queued,
        stop=stop,
        log=get_logger(component="outbox"),
    )
    parse_pool().warm_up()  # every mail is parsed in a worker process (parse_pool)
    try:
        listeners = [
            build_any(c, store, SystemClock(), stop, hooks.get(c.id), ack_queued)
            for c in listeners_cfg
        ]
        log.info(
            "starting",
            listeners=[c.id for c in listeners_cfg],
            once=once,
            store=str(config.store.path),
        )
        if once:
            code = await _run_once(listeners, log)
            await sender.recover()
            await sender.deliver_due()
            return code
        await _serve(config, hooks, store, sender, ack_queued, stop, log)
        return 0
    finally:
        close_parse_pool()
        await store.close()


async def _serve(
    config: Config,
    hooks: dict[str, RoutingHook],
    store: Store,
    sender: OutboxSender,
    ack_queued: asyncio.Event,
    stop: asyncio.Event,
    log: Any,
) -> None:
    """The daemon proper: supervised listeners, the outbox, signals, systemd."""
    # Imported here, not at the top: start-up time (`run --once` needs none of them).
    from engage_listener.observe.status import write_heartbeats  # noqa: PLC0415
    from engage_listener.service.sdnotify import Notifier  # noqa: PLC0415
    from engage_listener.service.supervisor import Supervisor  # noqa: PLC0415

    def build(
        cfg_all: Config, cfg: ListenerConfig, own_stop: asyncio.Event
    ) -> Listener | Pop3Listener:
        return build_any(cfg, store, SystemClock(), own_stop, hooks.get(cfg.id), ack_queued)

    def load() -> Config:
        fresh = load_config(config.path)
        new_hooks = load_hooks(fresh)
        check_log_directories(fresh)
        if fresh.store.path != config.store.path:
            log.warning("reload_store_ignored", message="Store/Path changes need a restart")
        hooks.clear()
        hooks.update(new_hooks)
        return fresh

    def reloaded(fresh: Config) -> None:
        sender.endpoints = smtp_endpoints(fresh)

    supervisor = Supervisor(build, Notifier(), log)
    supervisor.on_reload = reloaded
    supervisor.heartbeat = lambda workers: write_heartbeats(store, workers)
    metrics = await _start_metrics(config, store, supervisor, log)
    reload = asyncio.Event()
    _install_signal_handlers(stop, reload, log)
    supervisor.start(config)
    outbox = asyncio.create_task(sender.run(), name="outbox")
    outbox.add_done_callback(lambda task: _report_death(task, stop, log))
    outbox_stopped = asyncio.create_task(_stop_with_grace(outbox, stop))
    await supervisor.serve(reload, stop, load)
    await outbox_stopped
    await write_heartbeats(store, {})
    if metrics is not None:
        await metrics.stop()
    log.info("stopped")


def _report_death(task: asyncio.Task[None], stop: asyncio.Event, log: Any) -> None:
    """The acknowledgement sender must never end before shutdown: say so if it does."""
    if stop.is_set() or task.cancelled():
        return
    error = task.exception()
    log.error(
        "outbox_died",
        error=f"{type(error).__name__}: {error}" if error else "returned",
        message="acknowledgements are not sent until the daemon is restarted",
    )


async def _stop_with_grace(task: asyncio.Task[None], stop: asyncio.Event) -> None:
    """Give `task` the same grace as the listeners, counted from the same moment (one
    shutdown budget, not one after the other), then cancel it."""
    await stop.wait()
    await asyncio.wait({task}, timeout=SHUTDOWN_GRACE)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def _run_once(listeners: Sequence[Listener | Pop3Listener], log: Any) -> int:
    results = await asyncio.gather(*(lst.run_once() for lst in listeners), return_exceptions=True)
    failed = 0
    for lst, result in zip(listeners, results, strict=True):
        if isinstance(result, BaseException):
            failed += 1
            kind = "unexpected"
            if isinstance(result, Exception):
                _, kind = backoff(result, 1)  # the same words as the daemon's
            lst.log.error(
                "listener_error", kind=kind, error=str(result), error_type=type(result).__name__
            )
    log.info("once_done", listeners=len(listeners), failed=failed)
    return 1 if failed else 0


async def _start_metrics(
    config: Config, store: Store, supervisor: Supervisor, log: Any
) -> MetricsServer | None:
    """The optional Prometheus endpoint, fed from the same figures as `status`."""
    if config.metrics is None:
        return None
    from engage_listener.observe.metrics import MetricsServer  # noqa: PLC0415 - start-up time: prometheus_client
    from engage_listener.observe.status import read_status  # noqa: PLC0415

    zones = {c.id: c.time_zone for c in config.listeners}

    async def collect() -> list[ListenerStatus]:
        return await read_status(store, list(supervisor.running), tz=zones)

    m = config.metrics
    server = MetricsServer(m.host, m.port, collect, health_max_age=float(m.health_max_age))
    await server.start()
    log.info("metrics_listening", host=m.host, port=server.port)
    return server


def _install_signal_handlers(stop: asyncio.Event, reload: asyncio.Event, log: Any) -> None:
    """SIGTERM/SIGINT set the stop event, SIGHUP the reload event; nothing more."""
    loop = asyncio.get_running_loop()

    def handler(sig: signal.Signals, event: asyncio.Event) -> None:
        log.info("signal", signal=sig.name)
        event.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, handler, sig, stop)
    loop.add_signal_handler(signal.SIGHUP, handler, signal.SIGHUP, reload)
