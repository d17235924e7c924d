"""Runs what `service.build` makes: the daemon, or one pass of it (`run --once`).

Like uvicorn's server module: the configuration is already validated when it gets
here; this module opens the store, starts the listeners, the outbox and the metrics
endpoint, installs the signal handlers (which only set an event) and waits for the
listeners to finish.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Sequence
from typing import TYPE_CHECKING

from engage_listener.cases.hooks import RoutingHook
from engage_listener.clock import SystemClock
from engage_listener.config.cautions import config_warnings
from engage_listener.config.load import load_config
from engage_listener.config.model import Config, ListenerConfig
from engage_listener.errors import EngageError
from engage_listener.intake.retry import backoff
from engage_listener.mail.parse_shared import close_shared as close_parse_pool
from engage_listener.mail.parse_shared import configure as configure_parse_pool
from engage_listener.mail.parse_shared import shared as parse_pool
from engage_listener.observe.logs import (
    Logger,
    get_logger,
    install_loop_exception_handler,
)
from engage_listener.outbox.delivery import OutboxSender
from engage_listener.outbox.webhooks import WebhookSender
from engage_listener.service.build import (
    build_any,
    check_log_directories,
    load_hooks,
    send_message,
    smtp_endpoints,
    webhook_endpoints,
)
from engage_listener.service.coordinator import Coordinator, build_coordinator
from engage_listener.service.memory import one_malloc_arena
from engage_listener.sources.imap.listener import Listener
from engage_listener.store.interface import Store
from engage_listener.store.open import build_store

# For annotations only: what a plain `run --once` does not use (SMTP, metrics, POP3, the
# daemon's supervisor) is imported where it is used, to keep start-up short.
if TYPE_CHECKING:
    from engage_listener.observe.metrics import MetricsServer
    from engage_listener.observe.status import ListenerStatus
    from engage_listener.service.supervisor import Supervisor
    from engage_listener.sources.graph.listener import GraphListener
    from engage_listener.sources.pop3.listener import Pop3Listener

SHUTDOWN_GRACE = 6.0  # seconds for listeners to finish the mail in hand


class Wakes(asyncio.Event):
    """The event the engines set after a commit that queued something for after it: it
    wakes every sender (acknowledgements, webhooks), each waiting on its own event."""

    def __init__(self, *events: asyncio.Event) -> None:
        super().__init__()
        self.events = events

    def set(self) -> None:
        for event in self.events:
            event.set()


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
    coordinator = build_coordinator(config.store)
    # The PostgreSQL store fences each mail's commit on this daemon's leases, serving or
    # `run --once` (which takes every lease for its pass, or refuses: `_once`).
    store = build_store(config.store, owner=coordinator.store_owner)
    try:
        await store.open()
    except EngageError as exc:
        log.error("store_error", error=str(exc))
        return 1
    stop, ack_queued, event_queued = asyncio.Event(), asyncio.Event(), asyncio.Event()
    sender = OutboxSender(
        store,
        smtp_endpoints(config),
        send_message,
        wake=ack_queued,
        stop=stop,
        log=get_logger(component="outbox"),
    )
    webhooks = WebhookSender(
        store,
        webhook_endpoints(config),
        wake=event_queued,
        stop=stop,
        log=get_logger(component="webhooks"),
    )
    queued = Wakes(ack_queued, event_queued)
    configure_parse_pool(config.workers)  # one pool of worker processes for every listener
    parse_pool().warm_up()  # started now, not at the first mail
    try:
        listeners = [
            build_any(c, store, SystemClock(), stop, hooks.get(c.id), queued) for c in listeners_cfg
        ]
        log.info(
            "starting",
            listeners=[c.id for c in listeners_cfg],
            once=once,
            store=config.store.where,
        )
        if once:
            ids = [c.id for c in listeners_cfg]
            return await _once(listeners, ids, coordinator, (sender, webhooks), log)
        try:
            await coordinator.open([c.id for c in listeners_cfg])
        except EngageError as exc:
            log.error("coordinator_error", error=str(exc))
            return 1
        try:
            await _serve(config, hooks, store, (sender, webhooks), queued, coordinator, stop, log)
        finally:
            await coordinator.close()
        return 0
    finally:
        close_parse_pool()
        await store.close()


async def _serve(
    config: Config,
    hooks: dict[str, RoutingHook],
    store: Store,
    senders: tuple[OutboxSender, WebhookSender],
    queued: asyncio.Event,
    coordinator: Coordinator,
    stop: asyncio.Event,
    log: Logger,
) -> None:
    """The daemon proper: supervised listeners (those `coordinator` gives this daemon),
    the outbox, signals, systemd."""
    # Imported here, not at the top: start-up time (`run --once` needs none of them).
    from engage_listener.observe.status import write_heartbeats  # noqa: PLC0415
    from engage_listener.service.sdnotify import Notifier  # noqa: PLC0415
    from engage_listener.service.supervisor import Supervisor  # noqa: PLC0415

    def build(
        cfg_all: Config, cfg: ListenerConfig, own_stop: asyncio.Event
    ) -> Listener | Pop3Listener | GraphListener:
        return build_any(cfg, store, SystemClock(), own_stop, hooks.get(cfg.id), queued)

    def load() -> Config:
        fresh = load_config(config.path)
        new_hooks = load_hooks(fresh)
        check_log_directories(fresh)
        if fresh.store != config.store:
            log.warning("reload_store_ignored", message="Store changes need a restart")
        hooks.clear()
        hooks.update(new_hooks)
        return fresh

    sender, webhooks = senders

    def reloaded(fresh: Config) -> None:
        sender.endpoints = smtp_endpoints(fresh)
        webhooks.endpoints = webhook_endpoints(fresh)

    supervisor = Supervisor(build, Notifier(), log, coordinator)
    supervisor.on_reload = reloaded
    supervisor.heartbeat = lambda workers: write_heartbeats(store, workers)
    metrics = await _start_metrics(config, store, supervisor, coordinator, log)
    reload = asyncio.Event()
    _install_signal_handlers(stop, reload, log)
    supervisor.start(config)
    outbox = asyncio.create_task(sender.run(), name="outbox")
    outbox.add_done_callback(lambda task: _report_death(task, stop, log))
    hooks_task = asyncio.create_task(webhooks.run(), name="webhooks")
    hooks_task.add_done_callback(lambda task: _report_death(task, stop, log, "webhooks"))
    stopped = [asyncio.create_task(_stop_with_grace(t, stop)) for t in (outbox, hooks_task)]
    await supervisor.serve(reload, stop, load)
    await asyncio.gather(*stopped)
    await write_heartbeats(store, {})
    if metrics is not None:
        await metrics.stop()
    log.info("stopped")


def _report_death(
    task: asyncio.Task[None], stop: asyncio.Event, log: Logger, what: str = "acknowledgements"
) -> None:
    """A sender (acknowledgements, webhooks) must never end before shutdown: say so."""
    if stop.is_set() or task.cancelled():
        return
    error = task.exception()
    log.error(
        "outbox_died" if what == "acknowledgements" else "webhooks_died",
        error=f"{type(error).__name__}: {error}" if error else "returned",
        message=f"{what} are not sent until the daemon is restarted",
    )


async def _once(
    listeners: Sequence[Listener | Pop3Listener | GraphListener],
    ids: list[str],
    coordinator: Coordinator,
    senders: tuple[OutboxSender, WebhookSender],
    log: Logger,
) -> int:
    """`run --once`: one pass over every listener, holding every lease for it.

    Decisions: with several daemons on one PostgreSQL, a pass runs only when it can take
    every listener's lease (a stopped or dead daemon's, once expired): then it is fenced
    and claims the outbox like a daemon, so it never races one. While a live daemon holds
    any listener it is refused, naming them: those daemons are doing the work already.
    """
    try:
        await coordinator.open(ids)
        busy = await coordinator.take_all()
    except EngageError as exc:
        log.error("coordinator_error", error=str(exc))
        await coordinator.close()
        return 1
    if busy:
        log.error(
            "once_refused",
            listeners=sorted(busy),
            message="run --once: these listeners are held by a running daemon (see"
            " `engage-listener cluster`); stop the daemons first, or let them do the work",
        )
        await coordinator.close()
        return 1
    done = asyncio.Event()
    keeper = asyncio.create_task(coordinator.keep(done), name="leases")
    try:
        code = await _run_once(listeners, log)
        sender, webhooks = senders
        await sender.recover()
        await sender.deliver_due()
        await _deliver_webhooks_once(webhooks, log)
        return code
    finally:
        done.set()
        await asyncio.gather(keeper, return_exceptions=True)
        await coordinator.close()


async def _deliver_webhooks_once(webhooks: WebhookSender, log: Logger) -> None:
    """`run --once`: the events due now, one pass (later retries wait for the next run)."""
    try:
        await webhooks.deliver_due()
    except EngageError as exc:
        log.error("webhook_outbox_error", error=str(exc))
    finally:
        await webhooks.close()


async def _stop_with_grace(task: asyncio.Task[None], stop: asyncio.Event) -> None:
    """Give `task` the same grace as the listeners, counted from the same moment (one
    shutdown budget, not one after the other), then cancel it."""
    await stop.wait()
    await asyncio.wait({task}, timeout=SHUTDOWN_GRACE)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def _run_once(
    listeners: Sequence[Listener | Pop3Listener | GraphListener], log: Logger
) -> int:
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
    config: Config, store: Store, supervisor: Supervisor, coordinator: Coordinator, log: Logger
) -> MetricsServer | None:
    """The optional Prometheus endpoint, fed from the same figures as `status`."""
    if config.metrics is None:
        return None
    from engage_listener.observe.metrics import MetricsServer  # noqa: PLC0415 - start-up time: prometheus_client
    from engage_listener.observe.status import read_status  # noqa: PLC0415

    zones = {c.id: c.time_zone for c in config.listeners}

    async def collect() -> list[ListenerStatus]:
        running = list(supervisor.running)  # this daemon's listeners: it is their owner
        owners = dict.fromkeys(running, coordinator.identity.owner)
        return await read_status(store, running, tz=zones, owners=owners)

    m = config.metrics
    server = MetricsServer(m.host, m.port, collect, health_max_age=float(m.health_max_age))
    await server.start()
    log.info("metrics_listening", host=m.host, port=server.port)
    return server


def _install_signal_handlers(stop: asyncio.Event, reload: asyncio.Event, log: Logger) -> None:
    """SIGTERM/SIGINT set the stop event, SIGHUP the reload event; nothing more."""
    loop = asyncio.get_running_loop()

    def handler(sig: signal.Signals, event: asyncio.Event) -> None:
        log.info("signal", signal=sig.name)
        event.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, handler, sig, stop)
    loop.add_signal_handler(signal.SIGHUP, handler, signal.SIGHUP, reload)
