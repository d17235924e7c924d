"""Acknowledgement settings and intake for tests of what is sent after a case is made."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from devkit.dovecot import DovecotSandbox
from engage_listener.config.ack import AckConfig, SmtpConfig
from engage_listener.config.model import ListenerConfig
from engage_listener.config.templates import DEFAULT_TEMPLATE, AckTemplate
from engage_listener.observe.logs import get_logger
from engage_listener.outbox.delivery import OutboxSender
from engage_listener.outbox.smtp import SmtpEndpoint, send_message
from engage_listener.store.sqlite.store import SqliteStore
from tests.support.config_xml import DONE, NEW, OWN
from tests.support.fakes import FakeClock
from tests.support.helpers import Harness
from tests.support.servers.smtp_server import SmtpTestServer


def ack_config(
    server: SmtpTestServer, template: AckTemplate = DEFAULT_TEMPLATE, **changes: Any
) -> AckConfig:
    """Acknowledgements on, sent through `server` as OWN; `changes` override any field."""
    ep = server.endpoint()
    values: dict[str, Any] = {
        "enabled": True,
        "smtp": SmtpConfig(
            ep.host, ep.port, ep.security, ep.username, ep.password, Path(ep.ca_file or "")
        ),
        "from_address": OWN,
        "from_name": "Atención al Cliente",
        "reply_to": None,
        "template": template,
        "on_follow_ups": False,
        "max_per_recipient_per_hour": 3,
        "own_addresses": (OWN,),
        "source_line": 1,
    }
    values.update(changes)
    return AckConfig(**values)


def endpoint(cfg: ListenerConfig) -> SmtpEndpoint:
    """The SMTP endpoint of the listener's acknowledgement settings."""
    ack = cfg.acknowledgement
    assert ack is not None
    s = ack.smtp
    return SmtpEndpoint(
        s.host, s.port, s.security, s.username, s.password, str(s.ca_file), timeout=5.0
    )


def sender_for(
    store: SqliteStore, cfg: ListenerConfig, send: Any = send_message, wall: Any = None
) -> OutboxSender:
    """The daemon's outbox sender for one listener (`send` and `wall` replaceable)."""
    kwargs = {"wall": wall} if wall else {}
    return OutboxSender(
        store,
        {cfg.id: endpoint(cfg)},
        send,
        wake=asyncio.Event(),
        stop=asyncio.Event(),
        log=get_logger(),
        **kwargs,
    )


async def ingest(
    dovecot: DovecotSandbox, user: str, db: Path, cfg: ListenerConfig, mails: list[bytes]
) -> None:
    """Put `mails` in the user's input folder and run the listener once over them."""
    dovecot.create_folder(user, DONE)
    dovecot.append_many(user, NEW, mails)
    async with Harness(cfg, db, FakeClock()) as h:
        assert h.listener is not None
        result = await h.listener.run_once()
    assert result.ingested == len(mails)
