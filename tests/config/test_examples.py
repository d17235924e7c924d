"""The shipped configurations load, with their routing hooks, exactly as operators get them."""

from __future__ import annotations

from pathlib import Path

import pytest

from engage_listener.config.load import load_config
from engage_listener.errors import ConfigError
from engage_listener.service.build import load_hooks
from tests.support.paths import REPO

ROOT = REPO
FILES = sorted([*ROOT.joinpath("examples").glob("*.xml"), ROOT / "config" / "engage-listener.xml"])


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_shipped_config_is_valid(path: Path) -> None:
    try:
        config = load_config(path)
    except ConfigError as exc:
        # Only CA files of the example's (imaginary) company may be missing here.
        assert all(p.element == "CaFile" and "does not exist" in p.message for p in exc.problems)
        return
    assert config.imap_listeners
    hooks = load_hooks(config)
    assert set(hooks) == {c.id for c in config.imap_listeners if c.routing_hook}


def test_gmail_example_uses_every_case_and_ack_element() -> None:
    config = load_config(ROOT / "examples" / "gmail.xml")
    (gmail,) = config.imap_listeners
    assert gmail.routing_hook == "python:routing.by_keyword:route"
    assert gmail.acknowledgement is not None
    assert gmail.acknowledgement.smtp.port == 587
    assert "{case_number}" in gmail.acknowledgement.template.text
