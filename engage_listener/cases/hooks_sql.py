"""SQL routing hooks: a procedure file run statement by statement in the mail's transaction.

See `hooks` for the forms a RoutingHook takes. The file is read and checked (syntax,
parameter names, no BEGIN/COMMIT) whenever the configuration is loaded.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engage_listener.cases.hook_types import (
    DECISION_FIELDS,
    AttachmentView,
    HookContext,
    RoutingDecision,
    SqlExecutor,
    as_decision,
)
from engage_listener.errors import HookError, StoppedEarly, StoreError
from engage_listener.mail.parser import Address
from engage_listener.observe.logs import get_logger
from engage_listener.store.interface import AsyncExecute, SqlCursor, SqlDialect, SyncExecute
from engage_listener.store.open import sql_dialect

INLINE_SECONDS = 0.05  # a run longer than this moves the hook to the store's thread
INLINE_LIMIT = 0.5  # an inline run still going then is stopped and done on the thread

# Every parameter a SQL hook may name, and how it is computed from the context. The
# issue-18 ones: address lists comma-separated (lower-cased), the headers (lower-cased
# names) and the attachments as JSON for SQLite's json_extract/json_each, and what the
# Rules decided.
_VALUES: dict[str, Callable[[HookContext], object]] = {
    "case_id": lambda c: c.case.id,
    "case_number": lambda c: c.case.case_number,
    "message_id": lambda c: c.message.row,
    "customer_id": lambda c: c.customer and c.customer.id,
    "sender": lambda c: c.message.sender,
    "sender_name": lambda c: c.message.sender_name,
    "subject": lambda c: c.message.subject,
    "text": lambda c: c.message.text,
    "is_new_case": lambda c: int(c.case.is_new),
    "listener": lambda c: c.listener,
    "process": lambda c: c.case.process,
    "to_addresses": lambda c: _addresses(c.message.to),
    "cc_addresses": lambda c: _addresses(c.message.cc),
    "reply_to": lambda c: _addresses(c.message.reply_to),
    "delivered_to": lambda c: c.message.delivered_to,
    "new_text": lambda c: c.message.new_text,
    "headers": lambda c: json.dumps(dict(c.message.headers), ensure_ascii=False),
    "attachments": lambda c: _attachments(c.message.attachments),
    "automatic": lambda c: c.message.automatic,
    "rules_matched": lambda c: ",".join(c.rules.matched),
    "rules_inbox": lambda c: c.rules.inbox,
    "rules_priority": lambda c: c.rules.priority,
    "rules_tags": lambda c: ",".join(c.rules.tags),
}
SQL_PARAMETERS = tuple(_VALUES)  # what a hook's statements may name
# Quoted text is skipped, so ':' or '?' inside it is no parameter; nor is PostgreSQL's cast
# `x::text`.
_LEXEMES = re.compile(
    r"""(?P<quoted>'(?:[^']|'')*'?|"(?:[^"]|"")*"?|`[^`]*`?|\[[^\]]*\]?)"""
    r"""|(?P<comment>--[^\n]*|/\*.*?(?:\*/|\Z))"""
    r"""|(?P<cast>::)|[:@$](?P<param>[A-Za-z_]\w*)|(?P<positional>\?\d*)""",
    re.DOTALL,
)
# PostgreSQL's: no `ident` nor [ident] quoting (ARRAY[:a] holds a parameter), dollar-quoted
# bodies skipped, and '?' is an operator (jsonb), not a parameter.
_PG_LEXEMES = re.compile(
    r"""(?P<quoted>'(?:[^']|'')*'?|"(?:[^"]|"")*"?)"""
    r"""|(?P<dollar>\$(?P<tag>[A-Za-z_]\w*)?\$.*?(?:\$(?P=tag)?\$|\Z))"""
    r"""|(?P<comment>--[^\n]*|/\*.*?(?:\*/|\Z))"""
    r"""|(?P<cast>::)|:(?P<param>[A-Za-z_]\w*)""",
    re.DOTALL,
)


@dataclass(frozen=True)
class _Statement:
    number: int
    line: int
    text: str
    names: tuple[str, ...]


class SqlHook:
    """A SQL procedure file run statement by statement in the mail's transaction.

    Where it runs: a routing procedure usually takes well under a millisecond, and a hop
    to the store's thread and back costs more than that (it was a quarter of the ingest
    time). So it runs inline, on the event loop, while it stays quick. A run that took
    longer than INLINE_SECONDS moves the hook to the store's thread for good (until the
    configuration is reloaded), where a slow procedure holds up nothing else. A run still
    going after INLINE_LIMIT is stopped, so the loop is never held longer: its work is
    undone and done again on the thread; if the stop took the mail's transaction with it
    (an interrupted write), the mail is retried (`StoreError`), no attempt counted.
    That is SQLite's, whose statements run in this process. On PostgreSQL the driver waits
    for the server without the loop: every statement is awaited (`Transaction.awaiting`),
    neither inline nor on a thread.
    """

    def __init__(self, name: str, statements: list[_Statement], timeout: float) -> None:
        self.name = name
        self._statements = statements
        self._timeout = timeout
        self.inline = True
        # The parameters the statements name: only those are computed for a mail.
        self._names = frozenset(n for stmt in statements for n in stmt.names)

    async def run(self, ctx: HookContext, sql: SqlExecutor) -> RoutingDecision:
        """Run every statement; at the timeout the one running is interrupted."""
        values = _sql_values(ctx, self._needed())
        started = time.monotonic()
        deadline = started + self._timeout
        awaited = sql.awaiting(deadline)
        if awaited is not None:  # PostgreSQL: see Decisions
            return self._decision(await self._run_awaited(awaited, values, deadline))

        def work(execute: SyncExecute) -> dict[str, Any] | None:
            return self._run_all(execute, values, deadline)

        if self.inline:
            try:
                found = sql.run_inline(work, min(deadline, started + INLINE_LIMIT))
            except StoppedEarly:  # undone: done again below, off the loop
                self._off_the_loop(time.monotonic() - started)
            except StoreError:  # the stop took the transaction along: the mail is retried
                self._off_the_loop(time.monotonic() - started)
                raise
            else:
                if time.monotonic() - started > INLINE_SECONDS:
                    self._off_the_loop(time.monotonic() - started)
                return self._decision(found)
        return self._decision(await self._in_thread(sql, work, deadline))

    def _needed(self) -> frozenset[str]:
        """The parameters to compute for a run: those the statements name."""
        return self._names

    def _decision(self, found: dict[str, Any] | None) -> RoutingDecision:
        try:
            return as_decision(found)
        except TypeError as exc:
            stmt = self._statements[-1]
            raise HookError(
                f"routing hook {self.name}: statement {stmt.number} (line {stmt.line})"
                f" failed: {exc}"
            ) from exc

    async def _in_thread(
        self,
        sql: SqlExecutor,
        work: Callable[[SyncExecute], dict[str, Any] | None],
        deadline: float,
    ) -> dict[str, Any] | None:
        """All statements in one hop. A timer, not a cancellation, enforces the timeout:
        a cancelled task would still wait for the thread; the interrupt makes it return."""
        loop = asyncio.get_running_loop()
        timer = loop.call_at(loop.time() + deadline - time.monotonic(), sql.interrupt)
        try:
            return await sql.run_sync(work)
        finally:
            timer.cancel()

    def _off_the_loop(self, seconds: float) -> None:
        self.inline = False
        get_logger().warning(
            "routing_hook_slow",
            hook=self.name,
            seconds=round(seconds, 3),
            now="runs on the store's thread until the configuration is reloaded",
        )

    def _run_all(
        self, execute: SyncExecute, values: dict[str, object], deadline: float
    ) -> dict[str, Any] | None:
        """`_run_awaited` over a plain execute (SQLite: inline, or on the store's thread):
        nothing in it then suspends, so its coroutine runs to the end in one step, without
        an event loop (it may be on the store's thread)."""

        async def awaited(sql: str, params: Mapping[str, object]) -> SqlCursor:
            return execute(sql, params)

        run = self._run_awaited(awaited, values, deadline)
        try:
            run.send(None)
        except StopIteration as done:
            found: dict[str, Any] | None = done.value
            return found
        run.close()
        raise RuntimeError("a SQL hook's statement suspended without an event loop")

    async def _run_awaited(
        self, execute: AsyncExecute, values: dict[str, object], deadline: float
    ) -> dict[str, Any] | None:
        """Every statement, then the last one's decision row. The transaction's own error
        (PostgreSQL: a queued write of the mail's that failed with the first statement) is
        raised as it is."""
        found = None
        for stmt in self._statements:
            try:
                cursor = await execute(stmt.text, {n: values[n] for n in stmt.names})
                if stmt is self._statements[-1]:
                    found = _row_decision(cursor)
                cursor.close()  # an unread SELECT must not linger in the transaction
            except StoreError:
                raise
            except Exception as exc:
                error, cause = self._failed(stmt, exc, deadline)
                raise error from cause
            if time.monotonic() >= deadline:
                raise self._timed_out()
        return found

    def _failed(
        self, stmt: _Statement, exc: Exception, deadline: float
    ) -> tuple[HookError, Exception | None]:
        """The error for a statement that failed, and its cause (none past the deadline:
        the cancel's own error says nothing more)."""
        if time.monotonic() >= deadline:
            return self._timed_out(), None
        return HookError(
            f"routing hook {self.name}: statement {stmt.number} (line {stmt.line}) failed: {exc}"
        ), exc

    def _timed_out(self) -> HookError:
        return HookError(
            f"routing hook {self.name} timed out after {self._timeout:g} s"
            " (its running statement was interrupted)"
        )


def _sql_values(ctx: HookContext, names: frozenset[str]) -> dict[str, object]:
    """The parameters of `names` (those the hook's statements use; an unknown one is
    refused when the hook is loaded) for this mail: each is computed only if used (the
    JSON of the headers and the attachments cost most)."""
    return {name: _VALUES[name](ctx) for name in names}


def _attachments(found: tuple[AttachmentView, ...]) -> str:
    return json.dumps(
        [{"name": a.filename, "type": a.content_type, "size": a.size} for a in found],
        ensure_ascii=False,
    )


def _addresses(found: tuple[Address, ...]) -> str:
    return ",".join(a.normalized for a in found if a.address)


def _row_decision(cursor: Any) -> dict[str, Any] | None:
    """The decision columns of the first row the last statement returned, if any."""
    columns = [str(d[0]).lower() for d in getattr(cursor, "description", None) or ()]
    if not set(columns) & set(DECISION_FIELDS):
        return None
    row = cursor.fetchone()
    if row is None:
        return None
    found = {c: v for c, v in zip(columns, row, strict=True) if c in DECISION_FIELDS}
    if isinstance(found.get("tags"), str):
        found["tags"] = tuple(t.strip() for t in found["tags"].split(",") if t.strip())
    for flag in ("acknowledge", "discard"):
        if found.get(flag) in (0, 1):
            found[flag] = bool(found[flag])
    return found


def load_sql(spec: str, path: Path, timeout: float, dialect: SqlDialect | None = None) -> SqlHook:
    """Read and check the file, in the store's SQL dialect (the configured store's)."""
    dialect = dialect or sql_dialect()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise HookError(f"routing hook {spec}: cannot read {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise HookError(f"routing hook {spec}: {path} is not UTF-8 text: {exc}") from exc
    try:
        statements = _split_sql(text, dialect)
        if not statements:
            raise ValueError("it holds no SQL statement")
        _check_statements(statements, dialect)
    except ValueError as exc:
        raise HookError(f"routing hook {spec}: {path}: {exc}") from None
    return SqlHook(spec, statements, timeout)


def _blank_comments(text: str) -> str:
    """The text with comments turned to spaces, keeping offsets and line breaks."""
    return _LEXEMES.sub(lambda m: re.sub(r"[^\n]", " ", m[0]) if m["comment"] else m[0], text)


def _split_sql(text: str, dialect: SqlDialect) -> list[_Statement]:
    """Statements in order, cut only where sqlite3 says one is complete (quotes, comments
    and trigger bodies keep their ';'); the last one may lack its ';'."""
    statements: list[_Statement] = []
    start, chunk = 0, ""
    for piece in re.split(r"(?<=;)", text):
        chunk += piece
        if piece.endswith(";") and not dialect.is_complete(chunk):
            continue
        if not dialect.is_complete(chunk + "\n;"):
            raise ValueError(f"line {_line_of(text, start)}: unterminated quote or comment")
        code = _blank_comments(chunk)
        if code.strip().strip(";").strip():
            offset = start + len(code) - len(code.lstrip())
            statements.append(
                _Statement(
                    len(statements) + 1,
                    _line_of(text, offset),
                    chunk.strip(),
                    _parameters(chunk, dialect.name),
                )
            )
        start, chunk = start + len(chunk), ""
    return statements


def _line_of(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def _parameters(text: str, dialect_name: str = "sqlite") -> tuple[str, ...]:
    """Named parameters the statement uses; a positional '?' is an error."""
    names: dict[str, None] = {}
    lexemes = _PG_LEXEMES if dialect_name == "postgres" else _LEXEMES
    for match in lexemes.finditer(text):
        if match.groupdict().get("positional"):
            raise ValueError(f"use named parameters such as :case_id, not {match[0]!r}")
        if match["param"]:
            names[match["param"]] = None
    return tuple(names)


def _check_statements(statements: list[_Statement], dialect: SqlDialect) -> None:
    """Refuse what would break the mail's transaction or fail on every mail."""
    for stmt in statements:
        where = f"statement {stmt.number} (line {stmt.line})"
        words = [*re.findall(r"\w+", _blank_comments(stmt.text).upper())[:3], ""]
        if words[0] in ("BEGIN", "COMMIT", "END", "ROLLBACK") and "TO" not in words[1:]:
            raise ValueError(
                f"{where}: {words[0]} is not allowed; the hook runs inside"
                " the mail's transaction, committed by engage-listener"
            )
        unknown = [n for n in stmt.names if n not in SQL_PARAMETERS]
        if unknown:
            raise ValueError(
                f"{where}: unknown parameter :{unknown[0]}; known: :" + ", :".join(SQL_PARAMETERS)
            )
        problem = dialect.syntax_problem(stmt.text, stmt.names) if words[0] != "EXPLAIN" else None
        if problem:
            raise ValueError(f"{where}: {problem}")
