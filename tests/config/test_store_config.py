"""The Store block: SQLite at Path, PostgreSQL at Url (issue 16 point 1)."""

from __future__ import annotations

from pathlib import Path

import pytest

from engage_listener.config.load import parse_config
from engage_listener.errors import ConfigError
from engage_listener.observe.logs import scrub
from tests.support.config_xml import minimal_listener, wrap

URL = "postgresql://engage@db.example.org:5432/engage?sslmode=verify-full"


def _parse(store: str, path: Path) -> object:
    return parse_config(wrap(minimal_listener() + store), path)


def test_a_url_is_a_postgresql_store_with_its_password_and_ca(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "db-ca.pem").write_text("-----BEGIN CERTIFICATE-----\n")
    monkeypatch.setenv("ENGAGE_DB_PASSWORD", "db-pass-from-env-1")
    store = (
        f"<Store><Url>{URL.replace('&', '&amp;')}</Url>"
        "<Password>env:ENGAGE_DB_PASSWORD</Password><CaFile>db-ca.pem</CaFile></Store>\n"
    )
    config = parse_config(wrap(minimal_listener() + store), tmp_path / "el.xml")
    assert config.store.kind == "postgres" and config.store.url == URL
    assert config.store.password is not None
    assert config.store.password.reveal() == "db-pass-from-env-1"
    assert config.store.ca_file == tmp_path / "db-ca.pem"
    assert "db-pass-from-env-1" not in repr(config)
    assert scrub("login db-pass-from-env-1") == "login ***"  # never in a log line


def test_a_password_in_the_url_is_masked_wherever_the_store_is_shown(tmp_path: Path) -> None:
    url = "postgresql://engage:Secret%2Fpw-99@db/engage?password=other-pw-77&sslmode=require"
    config = parse_config(
        wrap(minimal_listener() + f"<Store><Url>{url.replace('&', '&amp;')}</Url></Store>\n"),
        tmp_path / "el.xml",
    )
    shown = config.store.where
    assert "Secret" not in shown and "other-pw-77" not in shown
    assert shown.startswith("postgresql://engage:***@db/engage?password=***")
    assert scrub("failed for Secret/pw-99") == "failed for ***"


def test_a_path_is_sqlite_as_before(tmp_path: Path) -> None:
    config = parse_config(
        wrap(minimal_listener() + "<Store><Path>cases.sqlite3</Path></Store>\n"),
        tmp_path / "el.xml",
    )
    assert config.store.kind == "sqlite" and config.store.url is None
    assert config.store.where == str(tmp_path / "cases.sqlite3")


@pytest.mark.parametrize(
    ("store", "element", "words"),
    [
        (f"<Store><Path>x.sqlite3</Path><Url>{URL}</Url></Store>", "Store", "both Path and Url"),
        ("<Store><CaFile>ca.pem</CaFile></Store>", "Store", "neither Path nor Url"),
        ("<Store><Url>mysql://db/x</Url></Store>", "Url", "libpq URL"),
        ("<Store><Path>x</Path><Password>p</Password></Store>", "Password", "PostgreSQL"),
        (f"<Store><Url>{URL}</Url><CaFile>missing.pem</CaFile></Store>", "CaFile", "missing"),
        (f"<Store><Url>{URL}</Url><Password>env:NO_SUCH_VAR_9</Password></Store>", "Password",
         "NO_SUCH_VAR_9"),
    ],
)  # fmt: skip
def test_store_problems_name_file_line_and_element(
    tmp_path: Path, store: str, element: str, words: str
) -> None:
    path = tmp_path / "el.xml"
    with pytest.raises(ConfigError) as raised:
        parse_config(wrap(minimal_listener() + store.replace("&", "&amp;") + "\n"), path)
    found = [p for p in raised.value.problems if p.element == element]
    assert found, raised.value.problems
    assert found[0].file == str(path) and found[0].line == 7  # after the 1 + 5 lines before it
    assert words in found[0].message
