"""Acknowledgement/Recipient and CustomerFrom (issue 18 point 6): loaded with one
default each, refused by the schema when misspelt."""

from __future__ import annotations

from pathlib import Path

import pytest

from engage_listener.config.load import parse_config
from engage_listener.errors import ConfigError
from engage_listener.service.build import engine_settings
from tests.support.config_xml import single_listener

FILE = Path("/etc/el/engage.xml")
ACK = (
    "<Acknowledgement><Smtp><HostName>smtp.example.org</HostName></Smtp>"
    "<FromAddress>soporte@example.org</FromAddress>{recipient}</Acknowledgement>"
)


def test_both_default_to_from() -> None:
    [cfg] = parse_config(single_listener(ACK.format(recipient="")), FILE).listeners
    assert cfg.customer_from == "From"
    assert cfg.acknowledgement is not None and cfg.acknowledgement.recipient == "From"
    settings = engine_settings(cfg, None)
    assert settings.customer_from == "From" and not settings.uses_reply_to


@pytest.mark.parametrize("kind", ["ImapListener", "Pop3Listener"])
def test_reply_to_is_read_into_the_engine_settings(kind: str) -> None:
    xml = "<CustomerFrom>ReplyTo</CustomerFrom>" + ACK.format(
        recipient="<Recipient> ReplyTo </Recipient>"
    )
    [cfg] = parse_config(single_listener(xml, kind), FILE).listeners
    assert cfg.customer_from == "ReplyTo"
    settings = engine_settings(cfg, None)
    assert settings.ack is not None and settings.ack.recipient == "ReplyTo"
    assert settings.uses_reply_to and "soporte@example.org" in settings.all_own_addresses


@pytest.mark.parametrize(
    "xml",
    [
        "<CustomerFrom>Sender</CustomerFrom>",
        ACK.format(recipient="<Recipient>Reply-To</Recipient>"),
    ],
)
def test_other_values_are_refused_with_the_element(xml: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(single_listener(xml), FILE)
    assert "CustomerFrom" in str(caught.value) or "Recipient" in str(caught.value)
