"""A check for mypy, never imported: each store implements what `store.interface` promises.

`store.open` imports the implementations by name (so nothing that only knows the
interface loads a database driver), which leaves mypy nothing to check them against; a
method a store lacks showed only when the engine first called it (the PostgreSQL store
and the closed-case look-ups). Here each store and its transaction are given to the
protocols they implement, so a missing method or another signature fails `mypy`.

Decisions:

* Both stores are held to the whole of `Store` and `Transaction`; a store that cannot
  yet do something must say so in a method that raises, not by lacking it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from engage_listener.store.interface import Store, Transaction
    from engage_listener.store.postgres.store import PostgresStore
    from engage_listener.store.postgres.transaction import PostgresTransaction
    from engage_listener.store.sqlite.store import SqliteStore
    from engage_listener.store.sqlite.transaction import SqliteTransaction

    def sqlite(store: SqliteStore, tx: SqliteTransaction) -> tuple[Store, Transaction]:
        return store, tx

    def postgres(store: PostgresStore, tx: PostgresTransaction) -> tuple[Store, Transaction]:
        return store, tx
