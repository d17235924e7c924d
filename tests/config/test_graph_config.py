"""GraphListener as operators configure it: defaults, limits, the login it needs, warnings."""

from __future__ import annotations

from pathlib import Path

import pytest

from engage_listener.config.cautions import config_warnings
from engage_listener.config.load import load_config
from engage_listener.config.model import describe, oauth_logins
from engage_listener.config.secret_refs import generate_key
from engage_listener.errors import ConfigError
from engage_listener.oauth.provider import scopes_for
from tests.support.config_xml import WITH_GRAPH, graph_xml, minimal_listener, write_config

CA = Path(__file__)  # any existing file stands for the CA bundle
BOX = "support@contoso.test"


@pytest.fixture
def key(tmp_path: Path) -> Path:
    generate_key(tmp_path / "el.key")
    return tmp_path / "el.key"


def load(tmp_path: Path, key: Path, xml: str, **options: object) -> object:
    options.setdefault("process", WITH_GRAPH)
    return load_config(write_config(tmp_path / "el.xml", xml, key_file=key, **options))


def problems(tmp_path: Path, key: Path, xml: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, key, xml)
    return [f"{p.element}: {p.message}" for p in caught.value.problems]


def test_defaults(tmp_path: Path, key: Path) -> None:
    xml = graph_xml("https://graph.microsoft.com/v1.0", CA, BOX, InputFolder="", OutputFolder="",
                    GraphEndpoint="")  # fmt: skip
    config = load_config(write_config(tmp_path / "el.xml", xml, process=WITH_GRAPH, key_file=key))
    (graph,) = config.enabled_listeners()
    assert (graph.protocol, graph.username, graph.id) == ("graph", BOX, "Graph")
    assert (graph.input_folder, graph.output_folder) == ("Inbox", None)
    assert (graph.poll_seconds, graph.sync_max_wait_time, graph.sync_max_changes_count) == (
        15, 60, 10)  # fmt: skip
    assert graph.graph_endpoint == "https://graph.microsoft.com/v1.0"
    assert (graph.host, graph.port, graph.use_ssl) == ("graph.microsoft.com", 443, True)
    assert "Deleted Items (delete)" in describe(graph) and "delta every 15 s" in describe(graph)
    assert any("DELETED (moved to Deleted Items)" in w for w in config_warnings(config))
    assert oauth_logins(graph)[0][0] == "Graph Graph" and oauth_logins(graph)[0][3] == "graph"
    assert graph.authentication is not None
    assert scopes_for(graph.authentication, "graph") == ["https://graph.microsoft.com/.default"]
    assert scopes_for(graph.authentication, "graph", "https://graph.microsoft.us") == [
        "https://graph.microsoft.us/.default"
    ]


def test_national_cloud_endpoint_and_poll_seconds(tmp_path: Path, key: Path) -> None:
    xml = graph_xml("https://graph.microsoft.us/v1.0/", CA, BOX, PollSeconds="5")
    config = load_config(write_config(tmp_path / "el.xml", xml, process=WITH_GRAPH, key_file=key))
    (graph,) = config.graph_listeners
    assert graph.graph_endpoint == "https://graph.microsoft.us/v1.0"
    assert (graph.host, graph.poll_seconds) == ("graph.microsoft.us", 5)


@pytest.mark.parametrize("seconds", ["4", "301"])
def test_poll_seconds_out_of_range(tmp_path: Path, key: Path, seconds: str) -> None:
    found = problems(tmp_path, key, graph_xml("https://g.test/v1.0", CA, BOX, PollSeconds=seconds))
    assert any(p.startswith("PollSeconds") for p in found)


def test_authentication_must_be_microsoft(tmp_path: Path, key: Path) -> None:
    google = {"Type": "Google", "ClientId": "c", "ClientSecret": "plain:s"}
    found = problems(tmp_path, key, graph_xml("https://g.test/v1.0", CA, BOX, auth=google))
    assert any("needs Type Microsoft, not Google" in p for p in found)


def test_authentication_is_required(tmp_path: Path, key: Path) -> None:
    xml = graph_xml("https://g.test/v1.0", CA, BOX)
    start = xml.index("    <Authentication>")
    xml = xml[:start] + xml[xml.index("</Authentication>\n") + len("</Authentication>\n") :]
    assert any("Authentication" in p for p in problems(tmp_path, key, xml))


def test_endpoint_must_be_https(tmp_path: Path, key: Path) -> None:
    found = problems(tmp_path, key, graph_xml("http://graph.test/v1.0", CA, BOX))
    assert any(p.startswith("GraphEndpoint: must be an https:// address") for p in found)


def test_switched_off_and_ids_unique_across_kinds(tmp_path: Path, key: Path) -> None:
    xml = graph_xml("https://g.test/v1.0", CA, BOX)
    config = load_config(write_config(tmp_path / "el.xml", xml, key_file=key, process={}))
    assert config.enabled_listeners() == ()
    assert "Graph listening is off: Process/UseGraphListener is not True" in config_warnings(config)
    both = minimal_listener(id_="Graph") + xml
    assert any("Graph" in p for p in problems(tmp_path, key, both))
