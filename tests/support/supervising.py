"""Set-up shared by the supervisor's tests: a configuration of IMAP listeners with a
SQLite store, and a supervisor serving in a task for the length of an `async with`."""

from __future__ import annotations

import asyncio
from pathlib import Path

from engage_listener.config.model import Config, ListenerConfig, StoreConfig
from engage_listener.service.supervisor import Supervisor


def supervised_config(tmp_path: Path, *listeners: ListenerConfig) -> Config:
    """These IMAP listeners (UseImapListener on), the store in tmp_path."""
    return Config(
        path=tmp_path / "el.xml",
        imap_listeners=listeners,
        use_imap_listener=True,
        store=StoreConfig(tmp_path / "store.sqlite3"),
    )


class Serving:
    """A supervisor serving in a task; on exit stopped and awaited (20 s at most)."""

    def __init__(self, supervisor: Supervisor, config: Config) -> None:
        self.supervisor, self.config = supervisor, config
        self.stop, self.reload = asyncio.Event(), asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Serving:
        self.supervisor.start(self.config)
        self.task = asyncio.create_task(
            self.supervisor.serve(self.reload, self.stop, lambda: self.config)
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.stop.set()
        assert self.task is not None
        await asyncio.wait_for(self.task, 20)
