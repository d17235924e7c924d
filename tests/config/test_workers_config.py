"""Process/Workers: the parse worker processes every listener shares (mail.parse_pool)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from engage_listener.config.cautions import config_warnings
from engage_listener.config.load import parse_config
from engage_listener.config.model import Config
from engage_listener.errors import ConfigError
from tests.support.config_xml import config_text, minimal_listener

PATH = Path("/etc/el/test.xml")


def load(**process: str) -> Config:
    switches = {"UseImapListener": "True", **process}
    return parse_config(config_text(minimal_listener(), process=switches).encode(), PATH)


def test_absent_means_one_worker_per_cpu() -> None:
    config = load()
    assert config.workers == (os.cpu_count() or 1)
    assert not [w for w in config_warnings(config) if "Workers" in w]


@pytest.mark.parametrize("value", ["1", " 3 ", "16"])
def test_a_count_is_taken_as_written(value: str) -> None:
    assert load(Workers=value).workers == int(value)


def test_zero_parses_in_process_and_is_warned() -> None:
    config = load(Workers="0")
    assert config.workers == 0
    warned = [w for w in config_warnings(config) if "Process/Workers is 0" in w]
    assert warned and "no time budget" in warned[0]


@pytest.mark.parametrize("value", ["-1", "two", "257", ""])
def test_anything_else_is_refused_with_its_line(value: str) -> None:
    text = config_text(minimal_listener(), process={"UseImapListener": "True", "Workers": value})
    with pytest.raises(ConfigError) as caught:
        parse_config(text.encode(), PATH)
    found = [p for p in caught.value.problems if p.element == "Workers"]
    assert found, caught.value.problems
    assert (
        found[0].line
        == text.splitlines().index(next(line for line in text.splitlines() if "<Workers>" in line))
        + 1
    )
