"""SQLite's dialect as the loader of operators' SQL routing hooks needs it (see
`store.interface.SqlDialect`): where a statement ends, and whether it parses."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

_SYNTAX_ERRORS = ("syntax error", "incomplete input", "unrecognized token")


class SqliteDialect:
    name = "sqlite"

    def is_complete(self, text: str) -> bool:
        return sqlite3.complete_statement(text)

    def syntax_problem(self, text: str, names: Sequence[str]) -> str | None:
        """A parse error, found by preparing the statement in an empty database: missing
        tables or columns are fine there, the real database has them."""
        memory = sqlite3.connect(":memory:")
        try:
            memory.execute(f"EXPLAIN {text}", dict.fromkeys(names))
        except sqlite3.Error as exc:
            return str(exc) if any(s in str(exc) for s in _SYNTAX_ERRORS) else None
        finally:
            memory.close()
        return None


SQLITE_DIALECT = SqliteDialect()
