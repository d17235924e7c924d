"""A check for mypy, never imported: each store implements what `store.interface` promises.

`store.open` imports the implementations by name (so nothing that only knows the
interface loads a database driver), which leaves mypy nothing to check them against; a
method a store lacks showed only when the engine first called it (the PostgreSQL store
and the closed-case look-ups). Here each store and its transaction are given to the
protocols they implement, so a missing method or another signature fails `mypy`.

Decisions:

* The PostgreSQL store is held to the parts of `Store` and `Transaction` it has: all but
  the webhook outbox's (`WebhookReads`, `WebhookWrites`), which its migration 9 brings,
  and so not yet to `Store`'s own methods (its `transaction()` must give a whole
  `Transaction`). Once it has them, `postgres` returns `tuple[Store, Transaction]` as
  `sqlite` does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from engage_listener.store.interface import MailWrites, Store, Transaction
    from engage_listener.store.interface_reads import CaseReads, ControlAndStatus, OutboxReads
    from engage_listener.store.interface_tx import AckWrites, CaseLifecycle, CustomerWrites
    from engage_listener.store.postgres.store import PostgresStore
    from engage_listener.store.postgres.transaction import PostgresTransaction
    from engage_listener.store.sqlite.store import SqliteStore
    from engage_listener.store.sqlite.transaction import SqliteTransaction

    def sqlite(store: SqliteStore, tx: SqliteTransaction) -> tuple[Store, Transaction]:
        return store, tx

    def postgres(
        store: PostgresStore, tx: PostgresTransaction
    ) -> tuple[
        CaseReads, OutboxReads, ControlAndStatus, MailWrites, CaseLifecycle, AckWrites,
        CustomerWrites,
    ]:  # fmt: skip
        return store, store, store, tx, tx, tx, tx
