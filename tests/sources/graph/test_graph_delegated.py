"""Delegated Graph sign-in: a user signs in once by pasted address (`auth login`, the
authorization code with PKCE) and the daemon reads a shared mailbox the user has Full
Access to with that user's tokens, refreshed silently: the identity-provider imitation
issues the tokens, the Graph imitation checks them against the mailbox's permissions."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Iterator
from pathlib import Path

import pytest

from engage_listener.clock import SystemClock
from engage_listener.config.load import load_config
from engage_listener.config.model import Config
from engage_listener.ops import commands
from engage_listener.ops.diagnose_graph import test_graph as graph_steps
from engage_listener.service.build_graph import (
    build_graph_listener,
    graph_connect,
    graph_token_source,
)
from engage_listener.sources.graph.answers import GraphAccessDenied
from engage_listener.store.sqlite.store import SqliteStore
from tests.support.config_xml import WITH_GRAPH, graph_xml, write_config
from tests.support.graph import BOX, NEW, all_moved, deliver
from tests.support.graph import cases as cases_made
from tests.support.servers.graph_server import GraphServer
from tests.support.servers.oauth_server import OAuthTestServer, token_cache

AGENT = "agent@contoso.test"  # a person with Full Access to the shared mailbox BOX
APP = "public-graph"  # a public client: no secret, delegated permissions only


class Browser:
    """The operator's browser: reads the printed sign-in address from the terminal,
    signs in there as `user`, and pastes back where it landed (stdin's one line)."""

    def __init__(self, terminal: io.StringIO, idp: OAuthTestServer, user: str) -> None:
        self.terminal, self.idp, self.user = terminal, idp, user

    def readline(self) -> str:
        url = next(w for w in self.terminal.getvalue().split() if "/oauth2/v2.0/authorize?" in w)
        return self.idp.consent(url, self.user) + "\n"


@pytest.fixture
def idp(tmp_path: Path, graph: GraphServer) -> Iterator[OAuthTestServer]:
    with OAuthTestServer(tmp_path / "idp") as server:
        server.add_ms_app("tenant-a", APP)
        graph.idp = server
        yield server


def delegated_config(tmp_path: Path, graph: GraphServer, idp: OAuthTestServer,
                     monkeypatch: pytest.MonkeyPatch) -> Config:  # fmt: skip
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path / "state"))  # the token cache
    _cache, key = token_cache(tmp_path / "state")
    auth = {"Type": "Microsoft", "TenantId": "tenant-a", "ClientId": APP,
            "Authority": idp.authority, "CaFile": str(idp.ca_file)}  # fmt: skip
    xml = graph_xml(graph.endpoint, graph.ca_file, BOX, auth=auth)
    graph.create_folder(BOX, NEW)
    graph.create_folder(BOX, "Inbox/Done")
    return load_config(write_config(tmp_path / "el.xml", xml, process=WITH_GRAPH, key_file=key))


async def sign_in(config: Config, idp: OAuthTestServer, user: str) -> str:
    terminal = io.StringIO()
    browser = Browser(terminal, idp, user)
    code = await commands.auth_login(config, "Graph", terminal, browser)  # type: ignore[arg-type]
    assert code == 0, terminal.getvalue()
    return terminal.getvalue()


async def test_a_users_sign_in_reads_the_shared_mailbox(
    tmp_path: Path, graph: GraphServer, idp: OAuthTestServer, store: SqliteStore, db: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    config = delegated_config(tmp_path, graph, idp, monkeypatch)
    graph.grant_full_access(BOX, AGENT)
    printed = await sign_in(config, idp, AGENT)
    assert f"Signed in as {AGENT}" in printed and "Full Access" in printed
    (form,) = [f for _, f in idp.state.requests if f.get("grant_type") == "authorization_code"]
    assert form["scope"].split()[0] == graph.endpoint.removesuffix("/v1.0") + (
        "/Mail.ReadWrite.Shared"
    )  # the delegated scope on the configured Graph origin
    (cfg,) = config.graph_listeners
    listener = build_graph_listener(cfg, store, SystemClock(), asyncio.Event())
    ids = deliver(graph, 2)
    await listener.run_once()
    assert all_moved(graph, db, ids)
    # The access token expires: the daemon refreshes it silently with the stored grant.
    for token in list(idp.state.access):
        idp.expire(token)
    more = deliver(graph, 1, first=5)
    await listener.run_once()
    assert all_moved(graph, db, ids + more)
    assert idp.grants("refresh_token") >= 1 and idp.grants("authorization_code") == 1
    assert 401 in {r.status for r in graph.requests()}


async def test_a_user_without_full_access_is_told_what_to_grant(
    tmp_path: Path, graph: GraphServer, idp: OAuthTestServer, store: SqliteStore, db: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """Signed in, but the mailbox is not shared with the user: 403 with the delegated advice
    (Full Access, Mail.ReadWrite.Shared), from the listener and from test-connection."""
    config = delegated_config(tmp_path, graph, idp, monkeypatch)
    await sign_in(config, idp, "someone@contoso.test")
    (cfg,) = config.graph_listeners
    deliver(graph, 1)
    listener = build_graph_listener(cfg, store, SystemClock(), asyncio.Event())
    with pytest.raises(GraphAccessDenied, match="Full Access") as caught:
        await listener.run_once()
    assert "Mail.ReadWrite.Shared" in str(caught.value)
    token = graph_token_source(cfg)
    steps = {s.name: s for s in await graph_steps(cfg, token, graph_connect(cfg, token))}
    assert steps["token"].ok and not steps["mailbox"].ok
    assert "Full Access" in steps["mailbox"].hint
    graph.grant_full_access(BOX, "someone@contoso.test")
    await listener.run_once()
    assert graph.messages(BOX, NEW) == [] and cases_made(db) == 1
