"""Builders shared by the tests: configs, listeners and mails against the real sandbox."""

from __future__ import annotations

import asyncio
import dataclasses
import email.utils
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from devkit.dovecot import DovecotSandbox
from engage_listener.config.model import Config, ListenerConfig, Secret
from engage_listener.observe.logs import get_logger
from engage_listener.outbox.delivery import OutboxSender
from engage_listener.outbox.smtp import send_message
from engage_listener.service.build import build_listener, smtp_endpoints
from engage_listener.sources.imap.listener import Listener
from engage_listener.store.sqlite.store import SqliteStore


def listener_config(dovecot: DovecotSandbox, user: str, **changes: Any) -> ListenerConfig:
    """A listener on the sandbox's plain port (STARTTLS is offered and used)."""
    changes.setdefault("ca_file", dovecot.ca_file)
    host, port = changes.pop("host", dovecot.host), changes.pop("port", dovecot.imap_port)
    return server_listener_config(host, port, user, DovecotSandbox.PASSWORD, **changes)


def server_listener_config(
    host: str, port: int, user: str, password: str, /, **changes: Any
) -> ListenerConfig:
    """A listener on any loopback server (UseSsl False, IMAP/New -> IMAP/Done)."""
    cfg = ListenerConfig(
        id=changes.pop("id", "Default"),
        host=host,
        port=port,
        username=user,
        password=Secret(password),
        use_ssl=False,
        input_folder="IMAP/New",
        output_folder="IMAP/Done",
        extract_attachments=False,
        sync_max_wait_time=60,
        sync_max_changes_count=10,
        protocol_log_file=None,
        ca_file=None,
        enabled=True,
        source_line=1,
    )
    return dataclasses.replace(cfg, **changes)


def make_mail(
    n: int,
    *,
    sender: str = "cliente@example.com",
    subject: str | None = None,
    body: str = "Hola, necesito ayuda.",
    message_id: str | None = None,
) -> bytes:
    """A small, valid, unique mail."""
    mid = message_id or f"<m{n}.{time.monotonic_ns()}@example.com>"
    return (
        f"From: Cliente {n} <{sender}>\r\n"
        f"To: soporte@example.org\r\n"
        f"Subject: {subject or f'Consulta {n}'}\r\n"
        f"Date: {email.utils.formatdate()}\r\n"
        f"Message-ID: {mid}\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        "\r\n"
        f"{body} ({n})\r\n"
    ).encode()


class Harness:
    """A listener wired to a real store and the sandbox, with a fake (or real) clock."""

    def __init__(self, cfg: ListenerConfig, db: Path, clock: Any) -> None:
        self.cfg = cfg
        self.store = SqliteStore(db)
        self.clock = clock
        self.stop = asyncio.Event()
        self.listener: Listener | None = None
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Harness:
        await self.store.open()
        self.listener = build_listener(self.cfg, self.store, self.clock, self.stop)
        return self

    async def start(self) -> Listener:
        assert self.listener is not None
        self.task = asyncio.create_task(self.listener.run())
        return self.listener

    async def __aexit__(self, *exc: object) -> None:
        self.stop.set()
        if self.task is not None:
            await asyncio.wait_for(self.task, 15)
        await self.store.close()


async def eventually(check: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
    """Poll `check` (real time) until true; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or check}")
        await asyncio.sleep(0.05)


def db_rows(db: Path, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Read the store from outside, the way an operator's second process would."""
    with sqlite3.connect(db) as conn:
        return list(conn.execute(sql, params))


async def deliver(config: Config, send: Any = None) -> int:
    """The daemon's sender, once: recover rows left `sending`, then send what is due."""
    store = SqliteStore(config.store.path)
    await store.open()
    try:
        sender = OutboxSender(
            store,
            smtp_endpoints(config),
            send or send_message,
            wake=asyncio.Event(),
            stop=asyncio.Event(),
            log=get_logger(),
        )
        await sender.recover()
        return await sender.deliver_due()
    finally:
        await store.close()
