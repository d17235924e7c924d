"""The webhook sender and engine as the daemon wires them, for tests against a receiver."""

from __future__ import annotations

import asyncio
from typing import Any

from engage_listener.cases.engine import CaseEngine, EngineSettings
from engage_listener.config.webhook import WEBHOOK_EVENTS
from engage_listener.observe.logs import get_logger
from engage_listener.outbox.webhooks import WebhookEndpoint, WebhookSender
from engage_listener.store.sqlite.store import SqliteStore
from tests.support.servers.webhook_server import WebhookReceiver

SECRET = "crm-shared-secret-9f1c"


def endpoint(receiver: WebhookReceiver, **changes: Any) -> WebhookEndpoint:
    """The receiver as a listener's Webhook (its CA when over HTTPS), 5 s per request."""
    values: dict[str, Any] = {
        "url": receiver.url,
        "secret": SECRET,
        "ca_file": str(receiver.ca_file) if receiver.ca_file else None,
        "timeout": 5.0,
    }
    values.update(changes)
    return WebhookEndpoint(**values)


def sender(
    store: SqliteStore, endpoints: dict[str, WebhookEndpoint], **options: Any
) -> WebhookSender:
    """The daemon's webhook sender for these listeners (`wall`, `retry_base`... replaceable)."""
    return WebhookSender(
        store,
        endpoints,
        wake=asyncio.Event(),
        stop=asyncio.Event(),
        log=get_logger(component="webhooks"),
        **options,
    )


def engine(store: SqliteStore, listener: str = "L", **settings: Any) -> CaseEngine:
    """The case engine of `listener` queueing every webhook event."""
    settings.setdefault("webhook_events", WEBHOOK_EVENTS)
    return CaseEngine(store, EngineSettings(listener, extract_attachments=False, **settings))
