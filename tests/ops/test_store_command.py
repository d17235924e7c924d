"""`engage-listener store migrate` (issue 16 point 2): the schema by hand, for both stores."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from devkit.postgres import PostgresServer
from engage_listener.ops.cli import main
from engage_listener.store.postgres.schema import LATEST
from engage_listener.store.sqlite.schema import MIGRATIONS
from tests.support.config_xml import config_text, minimal_listener
from tests.support.postgres import fresh_database, postgres_server

__all__ = ["postgres_server"]  # a fixture


def test_migrate_creates_a_sqlite_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "el.xml"
    config.write_text(config_text(minimal_listener(), store="cases.sqlite3"))
    assert main(["store", "migrate", "--config", str(config)]) == 0
    with sqlite3.connect(tmp_path / "cases.sqlite3") as db:
        assert db.execute("PRAGMA user_version").fetchone() == (len(MIGRATIONS),)
    assert "schema up to date" in capsys.readouterr().out


def test_migrate_a_postgresql_store_twice(
    postgres_server: PostgresServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = fresh_database(postgres_server)
    config = tmp_path / "el.xml"
    config.write_text(config_text(minimal_listener(), store=url))
    for _ in range(2):
        assert main(["store", "migrate", "--config", str(config)]) == 0
    database = url.rsplit("/", 1)[1]
    versions = postgres_server.sql("SELECT version FROM schema_version", database=database)
    assert versions.split() == [str(LATEST)]
    out = capsys.readouterr().out
    assert postgres_server.password not in out and ":***@127.0.0.1" in out
