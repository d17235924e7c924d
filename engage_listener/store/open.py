"""Building the store the configuration names: the one place an implementation is picked.

Decisions:

* Implementations are named here by module path and imported by name when chosen (like
  uvicorn's event loops), so nothing that only knows `store.interface` loads a database
  driver, and a PostgreSQL store (issue 16) is one more entry.
* Today there is one implementation, SQLite; `config.store` names only its path.
"""

from __future__ import annotations

import importlib
from typing import Any

from engage_listener.config.model import StoreConfig
from engage_listener.store.interface import SqlDialect, Store

DEFAULT = "sqlite"
# name -> (module, store class, SQL dialect of its routing hooks)
IMPLEMENTATIONS: dict[str, tuple[str, str, str]] = {
    "sqlite": ("engage_listener.store.sqlite.store", "SqliteStore", "SQLITE_DIALECT"),
}


def _member(kind: str, index: int) -> Any:
    module, *names = IMPLEMENTATIONS[kind]
    return getattr(importlib.import_module(module), names[index])


def build_store(config: StoreConfig, kind: str = DEFAULT) -> Store:
    """The store `config` names, not yet opened (`await store.open()`)."""
    store: Store = _member(kind, 0)(config.path)
    return store


async def open_store(config: StoreConfig, kind: str = DEFAULT) -> Store:
    """The store `config` names, opened (created and migrated if need be); close it."""
    store = build_store(config, kind)
    await store.open()
    return store


def sql_dialect(kind: str = DEFAULT) -> SqlDialect:
    """The SQL dialect operators' `sql:` routing hooks are written in for this store."""
    dialect: SqlDialect = _member(kind, 1)
    return dialect
