"""Operator commands on a Graph listener: test-connection's steps against the Graph
imitation, and what reset/search say of Graph for now."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from engage_listener.config.load import load_config
from engage_listener.config.model import Config
from engage_listener.config.secret_refs import generate_key
from engage_listener.errors import EngageError
from engage_listener.ops import commands
from engage_listener.ops.diagnose import Step
from engage_listener.ops.diagnose_graph import test_graph as graph_steps
from engage_listener.ops.search import Criteria
from engage_listener.service.build_graph import graph_connect
from tests.support.config_xml import WITH_GRAPH, graph_xml, write_config
from tests.support.servers.graph_server import GraphServer

BOX = "support@contoso.test"


@pytest.fixture
def graph(tmp_path: Path) -> Iterator[GraphServer]:
    with GraphServer(tmp_path / "graph") as server:
        server.add_mailbox(BOX)
        yield server


def config(tmp_path: Path, server: GraphServer, **extra: Any) -> Config:
    generate_key(tmp_path / "el.key")
    xml = graph_xml(server.endpoint, server.ca_file, BOX, **extra)
    path = write_config(tmp_path / "el.xml", xml, process=WITH_GRAPH, key_file=tmp_path / "el.key")
    return load_config(path)


async def steps(cfg: Config, server: GraphServer, create: bool = False) -> list[Step]:
    (listener,) = cfg.graph_listeners

    async def token(force: bool) -> str:
        return server.issue_token()

    return await graph_steps(listener, token, graph_connect(listener, token), create_folders=create)


def by_name(found: list[Step]) -> dict[str, Step]:
    return {step.name: step for step in found}


async def test_everything_in_place(tmp_path: Path, graph: GraphServer) -> None:
    graph.create_folder(BOX, "Inbox/New")
    graph.create_folder(BOX, "Inbox/Done")
    found = by_name(await steps(config(tmp_path, graph), graph))
    assert all(step.ok for step in found.values())
    assert list(found) == ["token", "mailbox", "input folder", "output folder", "error folder",
                           "read"]  # fmt: skip
    assert "created when first needed" in found["error folder"].detail


async def test_missing_folders_then_created(tmp_path: Path, graph: GraphServer) -> None:
    cfg = config(tmp_path, graph)
    found = by_name(await steps(cfg, graph))
    assert not found["input folder"].ok and "--create-folders" in found["input folder"].hint
    created = by_name(await steps(cfg, graph, create=True))
    assert all(step.ok for step in created.values())
    assert graph.folder_id(BOX, "Inbox/Error")  # the error folder was made too


async def test_access_denied_says_what_to_grant(tmp_path: Path, graph: GraphServer) -> None:
    graph.allow(BOX, False)
    found = by_name(await steps(config(tmp_path, graph), graph))
    assert not found["mailbox"].ok
    assert "Mail.ReadWrite" in found["mailbox"].hint
    assert "access policy" in found["mailbox"].detail


async def test_search_refused_reset_and_resume_accepted(tmp_path: Path, graph: GraphServer) -> None:
    cfg = config(tmp_path, graph)
    with pytest.raises(EngageError, match="Microsoft Graph"):
        await commands.search(cfg, "Graph", Criteria("Inbox"))
    tomorrow = dt.datetime.now(dt.UTC).date() + dt.timedelta(days=2)
    assert (await commands.control_listener(cfg, "Graph", tomorrow)).action == "pause"
    assert (await commands.control_listener(cfg, "Graph", None)).action == "resume"
    assert (await commands.control_listener(cfg, "Graph", dt.date(2020, 1, 1))).action == "reset"
