"""ReopenDays (issue 18 point 2): one default, read per listener into the engine, and
refused by the schema with the element's line when it is not 0 to 3650."""

from __future__ import annotations

from pathlib import Path

import pytest

from engage_listener.cases.engine import EngineSettings
from engage_listener.config.load import parse_config
from engage_listener.config.model import DEFAULT_REOPEN_DAYS, ListenerConfig
from engage_listener.errors import ConfigError
from engage_listener.service.build import engine_settings
from tests.support.config_xml import single_listener

FILE = Path("/etc/el/engage.xml")


def test_the_default_is_defined_once_and_reaches_the_engine() -> None:
    [cfg] = parse_config(single_listener(""), FILE).listeners
    assert DEFAULT_REOPEN_DAYS == 7
    assert cfg.reopen_days == ListenerConfig.reopen_days == DEFAULT_REOPEN_DAYS
    assert engine_settings(cfg, None).reopen_days == EngineSettings.reopen_days == 7


@pytest.mark.parametrize("kind", ["ImapListener", "Pop3Listener"])
@pytest.mark.parametrize("days", [0, 30])
def test_each_listener_sets_its_own(kind: str, days: int) -> None:
    [cfg] = parse_config(
        single_listener(f"<ReopenDays> {days} </ReopenDays>", kind), FILE
    ).listeners
    assert engine_settings(cfg, None).reopen_days == days


@pytest.mark.parametrize("value", ["-1", "3651", "siete"])
def test_other_values_are_refused_with_the_element(value: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_config(single_listener(f"<ReopenDays>{value}</ReopenDays>"), FILE)
    assert "ReopenDays" in str(raised.value)
