"""Fixtures of the Graph source's tests: the Graph imitation with the support mailbox."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.graph import BOX
from tests.support.servers.graph_server import GraphServer


@pytest.fixture
def graph(tmp_path: Path) -> Iterator[GraphServer]:
    """The Graph imitation with the support mailbox."""
    with GraphServer(tmp_path / "graph") as server:
        server.add_mailbox(BOX)
        yield server
