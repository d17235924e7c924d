"""Building the store the configuration names: the one place an implementation is picked.

Decisions:

* Implementations are named here by module path and imported by name when chosen (like
  uvicorn's event loops), so nothing that only knows `store.interface` loads a database
  driver: an installation without psycopg (the `postgres` extra) runs SQLite as before.
* The configuration picks the implementation (`StoreConfig.kind`: `Url` is PostgreSQL,
  `Path` SQLite); `kind` overrides it for tests.
* `owner` is the daemon's id for fencing (issue 16): a store that may be shared by several
  daemons commits a mail only while that daemon holds the listener's lease. SQLite is
  never shared, and ignores it; None (operator commands) fences nothing.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from engage_listener.config.model import StoreConfig
from engage_listener.errors import StoreError
from engage_listener.observe.logs import register_secret
from engage_listener.store.interface import SqlDialect, Store

DEFAULT = "sqlite"
# name -> (module, factory `(config, owner) -> Store`, SQL dialect of its routing hooks)
IMPLEMENTATIONS: dict[str, tuple[str, str, str]] = {
    "sqlite": ("engage_listener.store.sqlite.store", "from_config", "SQLITE_DIALECT"),
    "postgres": ("engage_listener.store.postgres.store", "from_config", "POSTGRES_DIALECT"),
}
_EXTRA = {"postgres": "engage-listener[postgres] (psycopg)"}


def _import(module: str, kind: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as exc:  # the driver is an optional dependency
        raise StoreError(
            f"the {kind} store needs {_EXTRA.get(kind, 'its driver')}, not installed: {exc}"
        ) from None


def _member(kind: str, index: int) -> Any:
    module, *names = IMPLEMENTATIONS[kind]
    return getattr(_import(module, kind), names[index])


def build_store(config: StoreConfig, kind: str | None = None, owner: str | None = None) -> Store:
    """The store `config` names, not yet opened (`await store.open()`)."""
    store: Store = _member(kind or config.kind, 0)(config, owner)
    return store


async def open_store(
    config: StoreConfig, kind: str | None = None, owner: str | None = None
) -> Store:
    """The store `config` names, opened (created and migrated if need be); close it."""
    store = build_store(config, kind, owner)
    await store.open()
    return store


def sql_dialect(kind: str = DEFAULT) -> SqlDialect:
    """The SQL dialect operators' `sql:` routing hooks are written in for this store."""
    dialect: SqlDialect = _member(kind, 1)
    return dialect


async def copy_into(config: StoreConfig, source: Path) -> list[str]:
    """`store copy --from`: the SQLite store at `source` into the PostgreSQL store `config`
    names; a line per table with its counts. Safe to run again."""
    if config.kind != "postgres":
        raise StoreError("store copy needs a PostgreSQL store (Store/Url) to copy into")
    copy = _import("engage_listener.store.postgres.copy", "postgres")
    lines: list[str] = await copy.copy_into(config, source)
    return lines


def libpq_options(password: str | None, ca_file: Path | None) -> dict[str, Any]:
    """A PostgreSQL store's connection options beside its URL: the password (registered as
    a secret, never put in a conninfo string that could end up in an error) and the CA
    file. Here, not in `store.postgres`, so the coordinator's own connection uses them
    without loading the store."""
    options: dict[str, Any] = {}
    if password is not None:
        register_secret(password)
        options["password"] = password
    if ca_file is not None:
        options["sslrootcert"] = str(ca_file)
    return options
