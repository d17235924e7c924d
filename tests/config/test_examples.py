"""The shipped configurations load, with their routing hooks, exactly as operators get them."""

from __future__ import annotations

from pathlib import Path

import pytest

from engage_listener.config.load import load_config
from engage_listener.config.secret_refs import generate_key
from engage_listener.errors import ConfigError
from engage_listener.service.build import load_hooks
from tests.support.paths import REPO

ROOT = REPO
FILES = sorted([*ROOT.joinpath("examples").glob("*.xml"), ROOT / "config" / "engage-listener.xml"])


@pytest.fixture
def operator_secrets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What an installation provides outside the file: the key (systemd credentials) and
    the environment variables examples name (the Graph app's client secret)."""
    generate_key(tmp_path / "engage-listener.key")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    monkeypatch.setenv("ENGAGE_GRAPH_SECRET", "example-secret")


@pytest.mark.usefixtures("operator_secrets")
@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_shipped_config_is_valid(path: Path) -> None:
    try:
        config = load_config(path)
    except ConfigError as exc:
        # Only CA files of the example's (imaginary) company may be missing here.
        assert all(p.element == "CaFile" and "does not exist" in p.message for p in exc.problems)
        return
    assert config.enabled_listeners()
    hooks = load_hooks(config)
    assert set(hooks) == {c.id for c in config.listeners if c.routing_hook}


@pytest.mark.usefixtures("operator_secrets")
def test_graph_example_reads_a_shared_mailbox_through_graph() -> None:
    config = load_config(ROOT / "examples" / "m365-graph.xml")
    (graph,) = config.enabled_listeners()
    assert (graph.protocol, graph.username) == ("graph", "support@contoso.com")
    assert (graph.input_folder, graph.output_folder) == ("Inbox/New", "Inbox/Done")
    assert graph.graph_endpoint == "https://graph.microsoft.com/v1.0"
    assert graph.authentication is not None
    assert graph.authentication.flow == "client_credentials"
    assert (str(graph.read_from_date), graph.customer_from) == ("2026-12-01", "ReplyTo")
    assert [rule.name for rule in graph.rules] == ["Invoices"]


def test_gmail_example_uses_every_case_and_ack_element() -> None:
    config = load_config(ROOT / "examples" / "gmail.xml")
    (gmail,) = config.imap_listeners
    assert gmail.routing_hook == "python:routing.by_keyword:route"
    assert gmail.acknowledgement is not None
    assert gmail.acknowledgement.smtp.port == 587
    assert "{case_number}" in gmail.acknowledgement.template.text
