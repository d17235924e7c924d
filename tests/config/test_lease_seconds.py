"""`<Store><LeaseSeconds>`: how long a daemon holds a listener (several daemons, issue 16)."""

from __future__ import annotations

from pathlib import Path

import pytest

from engage_listener.config.load import parse_config
from engage_listener.config.model import DEFAULT_LEASE_SECONDS
from engage_listener.errors import ConfigError

LISTENER = (
    '<ImapListener ID="A">\n<HostName>h</HostName>\n<UserName>u</UserName>\n'
    "<Password>p</Password>\n</ImapListener>\n"
)


def config_with(store: str) -> bytes:
    return f"<EngageIntegrationService>\n{LISTENER}{store}</EngageIntegrationService>\n".encode()


def test_default_is_thirty_seconds_with_or_without_a_store_block() -> None:
    assert DEFAULT_LEASE_SECONDS == 30
    for store in ("", "<Store><Path>db.sqlite3</Path></Store>\n"):
        config = parse_config(config_with(store), Path("/etc/el/el.xml"))
        assert config.store.lease_seconds == DEFAULT_LEASE_SECONDS


def test_given_value_is_kept() -> None:
    store = "<Store>\n<LeaseSeconds> 12 </LeaseSeconds>\n<Path>db.sqlite3</Path>\n</Store>\n"
    config = parse_config(config_with(store), Path("/etc/el/el.xml"))
    assert config.store.lease_seconds == 12
    assert config.store.path == Path("/etc/el/db.sqlite3")


@pytest.mark.parametrize(
    ("value", "words"),
    [("1", "below the minimum 2"), ("3601", "above the maximum 3600"), ("x", "'x' is not valid")],
)
def test_bad_values_name_line_and_element(value: str, words: str) -> None:
    store = f"<Store>\n<Path>db.sqlite3</Path>\n<LeaseSeconds>{value}</LeaseSeconds>\n</Store>\n"
    with pytest.raises(ConfigError) as caught:
        parse_config(config_with(store), Path("/etc/el/el.xml"))
    (problem,) = caught.value.problems
    assert (problem.line, problem.element) == (9, "LeaseSeconds")
    assert words in problem.message
