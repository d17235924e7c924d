"""The Graph source's test helpers: a listener built from a configuration file as the
daemon builds it, against the Graph imitation, with the imitation's own tokens."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from engage_listener.clock import SystemClock
from engage_listener.config.load import load_config
from engage_listener.config.model import ListenerConfig
from engage_listener.service.build_graph import build_graph_listener
from engage_listener.sources.graph.listener import GraphListener
from engage_listener.store.sqlite.store import SqliteStore
from tests.support.config_xml import WITH_GRAPH, graph_xml, write_config
from tests.support.helpers import db_rows
from tests.support.servers.graph_server import GraphServer
from tests.support.servers.oauth_server import token_cache

BOX = "support@contoso.test"
NEW, DONE = "Inbox/New", "Inbox/Done"


def mail(number: int, size: int = 0) -> bytes:
    body = b"x" * size if size else f"Hello {number}".encode()
    head = f"From: Customer {number} <c{number}@example.test>\r\nSubject: Question {number}\r\n"
    return head.encode() + f"Message-ID: <{number}@graph.test>\r\n\r\n".encode() + body + b"\r\n"


class Tokens:
    """The injected token callback: the imitation's own tokens; records `force`."""

    def __init__(self, server: GraphServer) -> None:
        self.server, self.calls, self.issued = server, list[bool](), list[str]()

    async def __call__(self, force: bool) -> str:
        self.calls.append(force)
        self.issued.append(self.server.issue_token())
        return self.issued[-1]


def graph_config(tmp_path: Path, server: GraphServer, **extra: Any) -> ListenerConfig:
    _cache, key = token_cache(tmp_path / "state")
    xml = graph_xml(server.endpoint, server.ca_file, BOX, "Graph", **extra)
    path = write_config(tmp_path / "graph.xml", xml, process=WITH_GRAPH, key_file=key)
    return load_config(path).graph_listeners[0]


def make(
    tmp_path: Path,
    server: GraphServer,
    store: SqliteStore,
    token: Callable[[bool], Awaitable[str]] | None = None,
    **extra: Any,
) -> GraphListener:
    server.create_folder(BOX, NEW)
    server.create_folder(BOX, DONE)
    cfg = graph_config(tmp_path, server, **extra)
    return build_graph_listener(
        cfg, store, SystemClock(), asyncio.Event(), token=token or Tokens(server)
    )


def deliver(server: GraphServer, count: int, folder: str = NEW, first: int = 0) -> list[str]:
    """`count` mails (numbered from `first`) delivered into `folder`: their immutable ids."""
    return [server.append(BOX, folder, mail(n)) for n in range(first, first + count)]


def arrange(
    tmp_path: Path, server: GraphServer, store: SqliteStore, count: int, **extra: Any
) -> tuple[GraphListener, list[str]]:
    """The usual start of a Graph test: a listener (`make`) and `count` mails waiting in
    its input folder."""
    listener = make(tmp_path, server, store, **extra)
    return listener, deliver(server, count)


def all_moved(server: GraphServer, db: Path, ids: list[str]) -> bool:
    """Each of `ids` became one case, is in the output folder and moved in the ledger."""
    return (
        cases(db) == len(ids)
        and sorted(in_folder(server, DONE)) == sorted(ids)
        and ledger(db) == dict.fromkeys(ids, "moved")
    )


def cases(db: Path) -> int:
    return int(db_rows(db, "SELECT COUNT(*) FROM cases")[0][0])


def ledger(db: Path) -> dict[str, str]:
    return {str(item): str(state) for item, state in db_rows(db, "SELECT item, state FROM ledger")}


def in_folder(server: GraphServer, folder: str) -> list[str]:
    return [m.immutable_id for m in server.messages(BOX, folder)]


async def eventually(check: Callable[[], bool], seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "not reached in time"
        await asyncio.sleep(0.05)


async def start(listener: GraphListener, **settings: Any) -> asyncio.Task[None]:
    listener.settings = dataclasses.replace(listener.settings, **settings)
    task = asyncio.create_task(listener.run())
    await eventually(lambda: listener.batches >= 1 and listener.state == "idle")
    return task


async def stop(listener: GraphListener, task: asyncio.Task[None]) -> None:
    listener.stop.set()
    await asyncio.wait_for(task, 10)
