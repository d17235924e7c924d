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


# Elements of an ImapListener that only make sense for an IMAP login: Graph has Mailbox,
# GraphEndpoint and Authentication Type Microsoft instead.
IMAP_LOGIN_ONLY = {"HostName", "Port", "UserName", "Password", "UseSsl", "AllowPlaintextLogin"}


def test_every_case_routing_and_acknowledgement_element_of_imap_is_a_graph_element() -> None:
    """The schema itself: what an ImapListener accepts beyond its login, a GraphListener
    accepts too (Rules, CustomerFrom, ReadFromDate, the case elements...)."""
    from engage_listener.config import schema  # noqa: PLC0415

    allowed = schema._model().allowed
    missing = set(allowed["ImapListener"]) - set(allowed["GraphListener"]) - IMAP_LOGIN_ONLY
    assert missing == set()


def test_rules_customer_from_and_read_from_date_are_loaded(tmp_path: Path, key: Path) -> None:
    rules = ('<Rules><Rule Name="Facturas"><Match Field="Subject" Contains="factura"/>'
             "<SetInbox>Facturacion</SetInbox></Rule></Rules>")  # fmt: skip
    xml = graph_xml("https://g.test/v1.0", CA, BOX, inner=rules, CustomerFrom="ReplyTo",
                    ReadFromDate="2026-11-01", TimeZone="America/Santiago")  # fmt: skip
    (graph,) = load_config(write_config(tmp_path / "el.xml", xml, process=WITH_GRAPH,
                                        key_file=key)).graph_listeners  # fmt: skip
    assert graph.customer_from == "ReplyTo"
    assert (str(graph.read_from_date), graph.time_zone) == ("2026-11-01", "America/Santiago")
    assert [rule.name for rule in graph.rules] == ["Facturas"]
    assert "1 rule(s)" in describe(graph)


def test_a_bad_rule_in_a_graph_listener_names_its_line(tmp_path: Path, key: Path) -> None:
    rules = '<Rules><Rule Name="Bad"><Match Field="Subject" Regex="(unclosed"/></Rule></Rules>'
    found = problems(tmp_path, key, graph_xml("https://g.test/v1.0", CA, BOX, inner=rules))
    assert any(p.startswith("Match") or "Regex" in p for p in found), found


@pytest.mark.parametrize(
    ("element", "said"),
    [
        ("UserName", "<Mailbox>"),
        ("Password", "Graph takes no password"),
        ("EwsUrl", "GraphEndpoint"),
        ("Domain", "TenantId"),
        ("ImpersonatedUser", "application access policy"),
        ("PollingInterval", "PollSeconds"),
    ],
)
def test_ews_and_imap_elements_in_a_graph_listener_say_what_to_use(
    tmp_path: Path, key: Path, element: str, said: str
) -> None:
    """A block copied from an EWS (or IMAP) reader: check-config names the GraphListener
    element doing that job, and the element stays an error (never silently ignored)."""
    xml = graph_xml("https://g.test/v1.0", CA, BOX, **{element: "x"})
    (found,) = [p for p in problems(tmp_path, key, xml) if p.startswith(element)]
    assert "unknown element" in found or "misplaced element" in found
    assert "Coming from EWS or IMAP: " in found and said in found


def test_other_blocks_get_no_ews_hint(tmp_path: Path, key: Path) -> None:
    found = problems(tmp_path, key, minimal_listener("<EwsUrl>x</EwsUrl>"))
    assert found and not any("Coming from EWS" in p for p in found)
