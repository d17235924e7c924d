"""PostgreSQL's dialect for operators' `sql:` routing hooks (see `store.interface.SqlDialect`).

Hooks name their parameters `:case_id` as in SQLite; psycopg wants `%(case_id)s`.
`to_pyformat` rewrites them outside quotes, dollar quotes and comments, leaves casts
(`x::text`) alone, and doubles every literal `%` (psycopg reads them even in quotes).

Decisions:

* `syntax_problem` finds nothing: PostgreSQL parses a statement only on the server, and
  the configuration is checked without one (`check-config` on a machine without access to
  the database). A syntax error shows on the first mail, as a hook error, rolled back.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence

_LEXEMES = re.compile(
    r"""(?P<quoted>'(?:[^']|'')*'?|"(?:[^"]|"")*"?)"""
    r"""|(?P<dollar>\$(?P<tag>[A-Za-z_]\w*)?\$.*?(?:\$(?P=tag)?\$|\Z))"""
    r"""|(?P<comment>--[^\n]*|/\*.*?(?:\*/|\Z))"""
    r"""|(?P<cast>::)|:(?P<param>[A-Za-z_]\w*)|(?P<percent>%)""",
    re.DOTALL,
)


@functools.lru_cache(maxsize=256)
def to_pyformat(sql: str) -> str:
    """`:name` parameters as psycopg's `%(name)s`, and `%` as `%%`. Cached: a hook runs
    the same few statements for every mail, and the lexing cost ~30 us each time."""

    def replace(match: re.Match[str]) -> str:
        if match["param"]:
            return f"%({match['param']})s"
        return match[0].replace("%", "%%")  # psycopg reads % inside quotes too

    return _LEXEMES.sub(replace, sql)


@functools.lru_cache(maxsize=512)
def format_marks(sql: str) -> str:
    """SQL the stores share (`store.common_reads`), written with `?` marks, as psycopg's
    `%s` marks (`%` doubled); it has no `?` or `%` inside quotes. Cached: the same few
    statements come again and again."""
    return sql.replace("%", "%%").replace("?", "%s")


def _unterminated(text: str) -> bool:
    for match in _LEXEMES.finditer(text):
        token = match[0]
        if match["quoted"] and (len(token) < 2 or token[-1] != token[0]):
            return True
        if match["dollar"]:
            opening = f"${match['tag'] or ''}$"
            if len(token) < 2 * len(opening) or not token.endswith(opening):
                return True
        if token.startswith("/*") and not token.endswith("*/"):
            return True
    return False


def _code(text: str) -> str:
    """The text without quotes, dollar quotes and comments."""
    return _LEXEMES.sub(lambda m: "" if m["quoted"] or m["dollar"] or m["comment"] else m[0],
                        text)  # fmt: skip


class PostgresDialect:
    name = "postgres"

    def is_complete(self, text: str) -> bool:
        """Ends with a ';' outside quotes, dollar-quoted bodies and comments."""
        if _unterminated(text):
            return False
        return _code(text).rstrip().endswith(";")

    def syntax_problem(self, text: str, names: Sequence[str]) -> str | None:
        return None


POSTGRES_DIALECT = PostgresDialect()
