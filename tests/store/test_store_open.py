"""Picking the store (store.open): psycopg is an optional dependency, loaded only for a
PostgreSQL store; an installation without it runs SQLite as before."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from tests.support.paths import REPO

WITHOUT_PSYCOPG = """
import asyncio, sys
from pathlib import Path
sys.modules["psycopg"] = None  # as if not installed: importing it raises ImportError
sys.modules["psycopg_pool"] = None
import engage_listener.service.app, engage_listener.ops.cli  # the daemon and the CLI
from engage_listener.config.model import StoreConfig
from engage_listener.errors import StoreError
from engage_listener.store.open import build_store, open_store

async def main() -> None:
    store = await open_store(StoreConfig(Path(sys.argv[1])))
    await store.close()
    try:
        build_store(StoreConfig(Path("x"), url="postgresql://db/engage"))
    except StoreError as exc:
        print("refused:", exc)

asyncio.run(main())
"""


def test_sqlite_works_without_psycopg_and_postgresql_says_what_is_missing(
    tmp_path: Path,
) -> None:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(WITHOUT_PSYCOPG), str(tmp_path / "s.sqlite3")],
        capture_output=True, text=True, cwd=REPO, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "s.sqlite3").is_file()
    assert "refused: the postgres store needs engage-listener[postgres] (psycopg)" in done.stdout
