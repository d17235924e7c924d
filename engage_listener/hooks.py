"""Routing hooks: each installation's own PA_SYS_MSG_IN, in Python or in SQL.

The original service called a stored procedure, written by each installation, to choose a
case's inbox (queue / team). `RoutingHook` in the XML names one of:

- ``python:package.module:function``: a sync or async callable taking a `HookContext` and
  returning a `RoutingDecision`, a dict of its fields, or None. The module is imported
  normally; only if it is not found is the config file's directory *appended* to sys.path
  (so it never shadows an installed package). Modules are imported once per process, so
  changed Python code needs a restart. Sync callables run in a worker thread, which cannot
  be killed: past the timeout the mail fails, but the thread runs until the function returns.
- ``sql:path/to/procedure.sql``: statements run in order in the mail's own transaction, so
  their writes commit or roll back with the case. Named parameters: `SQL_PARAMETERS`, each
  statement getting only those it uses. The SQL may update ``cases`` itself; if its LAST
  statement returns rows with columns inbox, priority, tags (comma-separated) or acknowledge
  (0/1), the first row is also the decision. A statement running at the timeout is
  interrupted. The file is read and checked (syntax, parameter names, no BEGIN/COMMIT)
  whenever the configuration is loaded.

Every failure is a `HookError`: a configuration problem at load, a failed mail (rolled back)
at run time.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import re
import sqlite3
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol, TypeVar

from .errors import HookError
from .store import SyncExecute

T = TypeVar("T")

SQL_PARAMETERS = (
    "case_id",
    "case_number",
    "message_id",
    "customer_id",
    "sender",
    "sender_name",
    "subject",
    "text",
    "is_new_case",
    "listener",
    "process",
)
DECISION_FIELDS = ("inbox", "priority", "tags", "acknowledge")
_FORMS = "python:package.module:function or sql:path/to/procedure.sql"
_SYNTAX_ERRORS = ("syntax error", "incomplete input", "unrecognized token")
_LEXEMES = re.compile(  # quoted text is skipped, so ':' or '?' inside it is no parameter
    r"""(?P<quoted>'(?:[^']|'')*'?|"(?:[^"]|"")*"?|`[^`]*`?|\[[^\]]*\]?)"""
    r"""|(?P<comment>--[^\n]*|/\*.*?(?:\*/|\Z))"""
    r"""|[:@$](?P<param>[A-Za-z_]\w*)|(?P<positional>\?\d*)""",
    re.DOTALL,
)


@dataclass(frozen=True)
class CaseView:
    """The case being routed, as it stands in this mail's transaction."""

    id: int
    case_number: str
    process: str | None
    status: str
    inbox: str | None
    subject: str
    is_new: bool


@dataclass(frozen=True)
class MessageView:
    """The mail being routed; `row` is its id in the messages table."""

    row: int
    message_id: str | None
    sender: str
    sender_name: str
    subject: str
    text: str
    attachment_names: tuple[str, ...]
    automatic: str | None


@dataclass(frozen=True)
class CustomerView:
    id: int
    name: str
    addresses: tuple[str, ...]


@dataclass(frozen=True)
class HookContext:
    """Everything a hook may read; views, so a hook cannot change the engine's state."""

    listener: str
    case: CaseView
    message: MessageView
    customer: CustomerView | None


@dataclass(frozen=True)
class RoutingDecision:
    """What to change; None (or no tags) leaves the case as it is."""

    inbox: str | None = None
    priority: int | None = None
    tags: tuple[str, ...] = ()
    acknowledge: bool | None = None


class SqlExecutor(Protocol):
    """The mail's open transaction (`store.Transaction`), as a SQL hook uses it."""

    def interrupt(self) -> None: ...  # abort the running statement (Connection.interrupt)

    async def run_sync(self, work: Callable[[SyncExecute], T]) -> T:
        """`work(execute)` on the store's thread: plain sqlite3 calls, one hop for them all,
        where `interrupt` reaches them."""
        ...


class RoutingHook(Protocol):
    name: str

    async def run(self, ctx: HookContext, sql: SqlExecutor) -> RoutingDecision: ...


def load_hook(spec: str, base_dir: Path, timeout: float) -> RoutingHook:
    """The hook a RoutingHook setting names, checked now so mistakes surface at start-up."""
    spec = spec.strip()
    kind, _, target = spec.partition(":")
    if timeout <= 0:
        raise HookError(f"routing hook {spec}: the timeout must be positive, not {timeout}")
    if kind == "python":
        return _load_python(spec, target, base_dir, timeout)
    if kind == "sql" and target.strip():
        return _load_sql(spec, base_dir / Path(target.strip()).expanduser(), timeout)
    raise HookError(f"routing hook {spec!r} is malformed: expected {_FORMS}")


# ----- Python hooks ----------------------------------------------------------------------
class PythonHook:
    """A callable from an importable module (see the module docstring)."""

    def __init__(self, name: str, func: Callable[[HookContext], Any], timeout: float) -> None:
        self.name = name
        self._func = func
        self._timeout = timeout
        self._is_async = any(  # an async function, or an object with an async __call__
            inspect.iscoroutinefunction(f) for f in (func, type(func).__call__)
        )

    async def run(self, ctx: HookContext, sql: SqlExecutor) -> RoutingDecision:
        """Call the hook under the timeout; `sql` is unused, Python hooks get no transaction."""
        try:
            value = await asyncio.wait_for(self._call(ctx), self._timeout)
        except TimeoutError:
            message = f"routing hook {self.name} timed out after {self._timeout:g} s"
            raise HookError(message) from None
        try:
            return _as_decision(value)
        except TypeError as exc:
            raise HookError(f"routing hook {self.name} returned a bad decision: {exc}") from None

    async def _call(self, ctx: HookContext) -> Any:
        """Wraps errors inside wait_for, so a hook's own TimeoutError is not taken for ours."""
        try:
            if self._is_async:
                return await self._func(ctx)
            value = await asyncio.to_thread(self._func, ctx)
            return await value if inspect.isawaitable(value) else value
        except (Exception, SystemExit) as exc:  # a hook's sys.exit() must not stop the daemon
            raise HookError(f"routing hook {self.name} failed: {_describe(exc)}") from exc


def _load_python(spec: str, target: str, base_dir: Path, timeout: float) -> PythonHook:
    module_name, _, attr = target.partition(":")
    if not attr.isidentifier() or not all(p.isidentifier() for p in module_name.split(".")):
        raise HookError(f"routing hook {spec!r} is malformed: expected {_FORMS}")
    func = getattr(_import(spec, module_name, base_dir), attr, None)
    if func is None:
        raise HookError(f"routing hook {spec}: module {module_name!r} has no {attr!r}")
    if not callable(func):
        raise HookError(f"routing hook {spec}: {module_name}.{attr} is not callable")
    return PythonHook(spec, func, timeout)


def _import(spec: str, module_name: str, base_dir: Path) -> ModuleType:
    """Import normally; if the module is not found, retry with the config directory."""
    directory = str(base_dir.resolve())
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if directory in sys.path or not f"{module_name}.".startswith(f"{missing}."):
            raise _import_error(spec, module_name, exc) from exc
    except Exception as exc:
        raise _import_error(spec, module_name, exc) from exc
    sys.path.append(directory)
    importlib.invalidate_caches()
    try:
        return importlib.import_module(module_name)
    except Exception as exc:
        sys.path.remove(directory)
        raise _import_error(spec, module_name, exc) from exc


def _import_error(spec: str, module_name: str, exc: Exception) -> HookError:
    return HookError(f"routing hook {spec}: cannot import {module_name!r}: {_describe(exc)}")


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _as_decision(value: object) -> RoutingDecision:
    """A hook's result as a checked decision; anything odd is the hook's bug (TypeError)."""
    if value is None:
        return RoutingDecision()
    if isinstance(value, RoutingDecision):
        items: dict[Any, Any] = {k: getattr(value, k) for k in DECISION_FIELDS}
    elif isinstance(value, Mapping):
        items = dict(value)
    else:
        raise TypeError(f"a {type(value).__name__}, not a RoutingDecision, dict or None")
    unknown = sorted(str(k) for k in items if k not in DECISION_FIELDS)
    if unknown:
        raise TypeError(f"unknown key(s) {', '.join(unknown)}; use {', '.join(DECISION_FIELDS)}")
    for key, kind in (("inbox", str), ("priority", int), ("acknowledge", bool)):
        item = items.get(key)
        if item is not None and (type(item) is not kind or item == ""):
            raise TypeError(f"{key} must be {kind.__name__} or None, not {item!r}")
    tags = items.get("tags") or ()
    if not isinstance(tags, list | tuple) or not all(isinstance(t, str) for t in tags):
        raise TypeError(f"tags must be a list or tuple of str, not {tags!r}")
    return RoutingDecision(
        items.get("inbox"), items.get("priority"), tuple(tags), items.get("acknowledge")
    )


# ----- SQL hooks -------------------------------------------------------------------------
@dataclass(frozen=True)
class _Statement:
    number: int
    line: int
    text: str
    names: tuple[str, ...]


class SqlHook:
    """A SQL procedure file run statement by statement in the mail's transaction."""

    def __init__(self, name: str, statements: list[_Statement], timeout: float) -> None:
        self.name = name
        self._statements = statements
        self._timeout = timeout

    async def run(self, ctx: HookContext, sql: SqlExecutor) -> RoutingDecision:
        """Run every statement; at the timeout the one running is interrupted.

        All statements go to the store's thread in one call (a hop per statement cost
        more than the statements). A timer, not a cancellation, enforces the timeout:
        a cancelled task would still wait for the thread; the interrupt makes it return.
        """
        values = _sql_values(ctx)
        loop = asyncio.get_running_loop()
        timer = loop.call_later(self._timeout, sql.interrupt)
        deadline = time.monotonic() + self._timeout
        try:
            found = await sql.run_sync(lambda execute: self._run_all(execute, values, deadline))
        finally:
            timer.cancel()
        try:
            return _as_decision(found)
        except TypeError as exc:
            stmt = self._statements[-1]
            raise HookError(
                f"routing hook {self.name}: statement {stmt.number} (line {stmt.line})"
                f" failed: {exc}"
            ) from exc

    def _run_all(
        self, execute: SyncExecute, values: dict[str, object], deadline: float
    ) -> dict[str, Any] | None:
        """On the store's thread: every statement, then the last one's decision row."""
        found = None
        for stmt in self._statements:
            try:
                cursor = execute(stmt.text, {n: values[n] for n in stmt.names})
                if stmt is self._statements[-1]:
                    found = _row_decision(cursor)
                cursor.close()  # an unread SELECT must not linger in the transaction
            except Exception as exc:
                if time.monotonic() >= deadline:
                    raise self._timed_out() from None
                raise HookError(
                    f"routing hook {self.name}: statement {stmt.number}"
                    f" (line {stmt.line}) failed: {exc}"
                ) from exc
            if time.monotonic() >= deadline:
                raise self._timed_out()
        return found

    def _timed_out(self) -> HookError:
        return HookError(
            f"routing hook {self.name} timed out after {self._timeout:g} s"
            " (its running statement was interrupted)"
        )


def _sql_values(ctx: HookContext) -> dict[str, object]:
    return {
        "case_id": ctx.case.id,
        "case_number": ctx.case.case_number,
        "message_id": ctx.message.row,
        "customer_id": ctx.customer and ctx.customer.id,
        "sender": ctx.message.sender,
        "sender_name": ctx.message.sender_name,
        "subject": ctx.message.subject,
        "text": ctx.message.text,
        "is_new_case": int(ctx.case.is_new),
        "listener": ctx.listener,
        "process": ctx.case.process,
    }


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
    if found.get("acknowledge") in (0, 1):
        found["acknowledge"] = bool(found["acknowledge"])
    return found


def _load_sql(spec: str, path: Path, timeout: float) -> SqlHook:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise HookError(f"routing hook {spec}: cannot read {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise HookError(f"routing hook {spec}: {path} is not UTF-8 text: {exc}") from exc
    try:
        statements = _split_sql(text)
        if not statements:
            raise ValueError("it holds no SQL statement")
        _check_statements(statements)
    except ValueError as exc:
        raise HookError(f"routing hook {spec}: {path}: {exc}") from None
    return SqlHook(spec, statements, timeout)


def _blank_comments(text: str) -> str:
    """The text with comments turned to spaces, keeping offsets and line breaks."""
    return _LEXEMES.sub(lambda m: re.sub(r"[^\n]", " ", m[0]) if m["comment"] else m[0], text)


def _split_sql(text: str) -> list[_Statement]:
    """Statements in order, cut only where sqlite3 says one is complete (quotes, comments
    and trigger bodies keep their ';'); the last one may lack its ';'."""
    statements: list[_Statement] = []
    start, chunk = 0, ""
    for piece in re.split(r"(?<=;)", text):
        chunk += piece
        if piece.endswith(";") and not sqlite3.complete_statement(chunk):
            continue
        if not sqlite3.complete_statement(chunk + "\n;"):
            raise ValueError(f"line {_line_of(text, start)}: unterminated quote or comment")
        code = _blank_comments(chunk)
        if code.strip().strip(";").strip():
            offset = start + len(code) - len(code.lstrip())
            statements.append(
                _Statement(
                    len(statements) + 1, _line_of(text, offset), chunk.strip(), _parameters(chunk)
                )
            )
        start, chunk = start + len(chunk), ""
    return statements


def _line_of(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def _parameters(text: str) -> tuple[str, ...]:
    """Named parameters the statement uses; a positional '?' is an error."""
    names: dict[str, None] = {}
    for match in _LEXEMES.finditer(text):
        if match["positional"]:
            raise ValueError(f"use named parameters such as :case_id, not {match[0]!r}")
        if match["param"]:
            names[match["param"]] = None
    return tuple(names)


def _check_statements(statements: list[_Statement]) -> None:
    """Refuse what would break the mail's transaction or fail on every mail."""
    memory = sqlite3.connect(":memory:")
    try:
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
                    f"{where}: unknown parameter :{unknown[0]}; known: :"
                    + ", :".join(SQL_PARAMETERS)
                )
            problem = _syntax_problem(memory, stmt) if words[0] != "EXPLAIN" else None
            if problem:
                raise ValueError(f"{where}: {problem}")
    finally:
        memory.close()


def _syntax_problem(memory: sqlite3.Connection, stmt: _Statement) -> str | None:
    """A parse error, found by preparing the statement in an empty database: missing
    tables or columns are fine there, the real database has them."""
    try:
        memory.execute(f"EXPLAIN {stmt.text}", dict.fromkeys(stmt.names))
    except sqlite3.Error as exc:
        return str(exc) if any(s in str(exc) for s in _SYNTAX_ERRORS) else None
    return None
