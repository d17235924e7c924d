"""Builds a Microsoft Graph listener (see `service.build`, of which it is the Graph part):
its token callback on the listener's Microsoft account, its protocol log, its sessions.

Imported only when a configuration has a GraphListener (aiohttp is not loaded otherwise).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from engage_listener.cases.hooks import RoutingHook
from engage_listener.clock import Clock
from engage_listener.config.model import ListenerConfig
from engage_listener.errors import ConfigError, ConfigProblem
from engage_listener.observe.protolog import ProtocolLog
from engage_listener.service.build import assemble, protolog_factory, read_from, token_provider
from engage_listener.sources.graph.http import Exchange, GraphHttpSettings, GraphSession
from engage_listener.sources.graph.listener import GraphListener, GraphSettings
from engage_listener.store.interface import Store

TokenCallback = Callable[[bool], Awaitable[str]]


def graph_token_source(cfg: ListenerConfig) -> TokenCallback:
    """The Graph transport's token callback, on the listener's Microsoft account."""
    provider = token_provider(cfg.authentication, cfg.username, "graph", cfg.graph_origin)
    if provider is None:  # check-config refuses it; a clear error if it ever gets here
        raise ConfigError(
            [ConfigProblem("", cfg.source_line, "Authentication", "Graph needs Type Microsoft")]
        )

    async def token(force: bool) -> str:
        return await provider.token(force_refresh=force)

    return token


class GraphProtocolLog:
    """The protocol log of a Graph listener: request lines and statuses only (the
    transport masks state tokens and never hands over bodies or tokens). A file is
    opened per connection (so %date% patterns roll over) and the previous one closed."""

    def __init__(self, cfg: ListenerConfig) -> None:
        self.factory = protolog_factory(cfg)
        self.current: ProtocolLog | None = None

    def reopen(self) -> Callable[[Exchange], None] | None:
        if self.current is not None:
            self.current.close()
        self.current = self.factory()
        return self.record if self.current is not None else None

    def record(self, exchange: Exchange) -> None:
        if self.current is None:
            return
        self.current.sent(f"{exchange.method} {exchange.path}")
        answer = str(exchange.status) if exchange.status else "no answer"
        self.current.received(f"{answer} ({round(exchange.seconds * 1000)} ms)".encode())
        self.current.flush()


def graph_connect(
    cfg: ListenerConfig, token: TokenCallback | None = None
) -> Callable[[], GraphSession]:
    """A factory of the listener's Graph sessions (`token`: tests' own tokens)."""
    delegated = cfg.authentication is not None and cfg.authentication.flow == "delegated"
    settings = GraphHttpSettings(endpoint=cfg.graph_endpoint, ca_file=cfg.ca_file,
                                 delegated=delegated)  # fmt: skip
    source = token or graph_token_source(cfg)
    protolog = GraphProtocolLog(cfg)

    def connect() -> GraphSession:
        return GraphSession(cfg.username, source, settings, on_exchange=protolog.reopen())

    return connect


def build_graph_listener(
    cfg: ListenerConfig,
    store: Store,
    clock: Clock,
    stop: asyncio.Event,
    hook: RoutingHook | None = None,
    ack_queued: asyncio.Event | None = None,
    *,
    token: TokenCallback | None = None,
) -> GraphListener:
    """One Microsoft Graph listener; the same engine and ledger as IMAP."""
    settings = GraphSettings(
        id=cfg.id,
        input_folder=cfg.input_folder,
        output_folder=cfg.output_folder,
        sync_max_wait_time=float(cfg.sync_max_wait_time),
        sync_max_changes_count=cfg.sync_max_changes_count,
        poll_seconds=float(cfg.poll_seconds),
        error_folder=cfg.error_folder,
        max_attempts=cfg.max_attempts,
        max_message_size=cfg.max_message_size,
        read_from=read_from(cfg),
    )
    connect = graph_connect(cfg, token)
    parts = (store, clock, stop)
    return assemble(GraphListener, settings, connect, cfg, parts, hook, ack_queued)
