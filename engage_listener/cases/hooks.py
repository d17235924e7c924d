"""Routing hooks: each installation's own PA_SYS_MSG_IN, in Python or in SQL.

The original service called a stored procedure, written by each installation, to choose a
case's inbox (queue / team). `RoutingHook` in the XML names one of:

- ``python:package.module:function``: a sync or async callable taking a `HookContext` and
  returning a `RoutingDecision`, a dict of its fields, or None. The module is imported
  normally; only if it is not found is the config file's directory *appended* to sys.path
  (so it never shadows an installed package). Modules are imported once per process, so
  changed Python code needs a restart. Sync callables run in the hook's own threads
  (`HookThreads`, at most HOOK_THREADS at once), which cannot be killed: past the timeout
  the mail fails, but the thread runs until the function returns. While every one of
  them is held by such a call, the next mails fail at once with `routing_hook_stuck`
  (attempts, then quarantine) instead of waiting in a queue.
- ``pg:SCHEMA.NAME`` (PostgreSQL store only): a stored function or procedure called with
  named arguments in the mail's own transaction; its result columns are the decision
  (see `hooks_pg`).
- ``sql:path/to/procedure.sql``: statements run in order in the mail's own transaction, so
  their writes commit or roll back with the case. Named parameters: `SQL_PARAMETERS`, each
  statement getting only those it uses. The SQL may update ``cases`` itself; if its LAST
  statement returns rows with columns of `DECISION_FIELDS` (tags comma-separated,
  acknowledge and discard 0/1), the first row is also the decision. A statement running
  at the timeout is interrupted. The file is read and checked (syntax, parameter names,
  no BEGIN/COMMIT) whenever the configuration is loaded.

Every failure is a `HookError`: a configuration problem at load, a failed mail (rolled back)
at run time.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import importlib
import inspect
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from engage_listener.cases.hook_types import (
    DECISION_FIELDS,
    AttachmentView,
    CaseView,
    CustomerView,
    HookContext,
    MessageView,
    RoutingDecision,
    RoutingHook,
    SqlExecutor,
    as_decision,
)
from engage_listener.cases.hooks_pg import load_procedure
from engage_listener.cases.hooks_sql import SQL_PARAMETERS, SqlHook, load_sql
from engage_listener.errors import HookError
from engage_listener.store.open import sql_dialect

__all__ = [
    "DECISION_FIELDS",
    "SQL_PARAMETERS",
    "AttachmentView",
    "CaseView",
    "CustomerView",
    "HookContext",
    "HookStuckError",
    "HookThreads",
    "MessageView",
    "PythonHook",
    "RoutingDecision",
    "RoutingHook",
    "SqlExecutor",
    "SqlHook",
    "load_hook",
]

HOOK_THREADS = 4  # sync calls of one hook running at once; more are refused, not queued

_FORMS = (
    "python:package.module:function, sql:path/to/procedure.sql or pg:SCHEMA.NAME (PostgreSQL store)"
)


def load_hook(spec: str, base_dir: Path, timeout: float, store_kind: str = "sqlite") -> RoutingHook:
    """The hook a RoutingHook setting names, checked now so mistakes surface at start-up.
    `store_kind` is the configured store's ("sqlite", "postgres"): `sql:` files are in its
    dialect, and `pg:` procedures need PostgreSQL."""
    spec = spec.strip()
    kind, _, target = spec.partition(":")
    if timeout <= 0:
        raise HookError(f"routing hook {spec}: the timeout must be positive, not {timeout}")
    if kind == "python":
        return _load_python(spec, target, base_dir, timeout)
    if kind == "sql" and target.strip():
        path = base_dir / Path(target.strip()).expanduser()
        return load_sql(spec, path, timeout, sql_dialect(store_kind))
    if kind == "pg":
        if store_kind != "postgres":
            raise HookError(f"routing hook {spec}: pg: hooks need a PostgreSQL store (Store/Url)")
        return load_procedure(spec, target, timeout)
    raise HookError(f"routing hook {spec!r} is malformed: expected {_FORMS}")


# ----- Python hooks ----------------------------------------------------------------------
class HookStuckError(HookError):
    """Every thread of the hook is still held by a call that outlived RoutingTimeout."""


class HookThreads:
    """The threads a sync hook runs in: at most `size` at once, refused beyond that.

    Decisions: hooks used asyncio's default executor, which getaddrinfo (every
    reconnect) and other listeners share; six hung hooks filled it and every reconnect
    waited. So each hook gets threads of its own. A call past the timeout keeps its
    thread (Python cannot stop one), so stuck calls could pile up; instead, when all
    `size` are held the call fails at once (`HookStuckError`) rather than queueing
    behind them. Plain daemon threads, not a ThreadPoolExecutor: that one joins its
    workers at interpreter exit, so a hung hook would keep the daemon from stopping.
    The outcome travels as a value, so a hook's SystemExit never reaches the loop.
    """

    def __init__(self, size: int = HOOK_THREADS, name: str = "hook") -> None:
        self.size = size
        self._name = name
        self._free = threading.Semaphore(size)
        self._started = 0

    def start(self, func: Callable[[HookContext], Any], ctx: HookContext) -> asyncio.Future[Any]:
        """A future of (value, error) for `func(ctx)` on a thread; `HookStuckError` if none
        is free."""
        if not self._free.acquire(blocking=False):
            raise HookStuckError(f"all {self.size} hook threads are held by calls")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._started += 1
        thread = threading.Thread(
            target=self._work,
            args=(contextvars.copy_context(), func, ctx, loop, future),
            name=f"{self._name}-{self._started}",
            daemon=True,
        )
        try:
            thread.start()
        except BaseException:
            self._free.release()
            raise
        return future

    def _work(
        self,
        context: contextvars.Context,  # the caller's, as asyncio.to_thread passes it
        func: Callable[[HookContext], Any],
        ctx: HookContext,
        loop: asyncio.AbstractEventLoop,
        future: asyncio.Future[Any],
    ) -> None:
        value: Any = None
        error: BaseException | None = None
        try:
            value = context.run(func, ctx)
        except BaseException as exc:  # handed to the loop as a value, never raised there
            error = exc
        finally:
            self._free.release()  # the thread is free again only now
        # RuntimeError: the loop closed while the hook ran, nobody waits for it.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(_settle, future, (value, error))


def _settle(future: asyncio.Future[Any], outcome: tuple[Any, BaseException | None]) -> None:
    if not future.done():  # done: cancelled at the timeout
        future.set_result(outcome)


class PythonHook:
    """A callable from an importable module (see the module docstring)."""

    def __init__(
        self,
        name: str,
        func: Callable[[HookContext], Any],
        timeout: float,
        threads: HookThreads | None = None,
    ) -> None:
        self.name = name
        self._func = func
        self._timeout = timeout
        self._threads = threads or HookThreads()
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
        except HookStuckError as exc:
            raise HookStuckError(
                f"routing hook {self.name}: routing_hook_stuck: {exc} that outlived"
                f" RoutingTimeout ({self._timeout:g} s); refused without waiting"
            ) from None
        try:
            return as_decision(value)
        except TypeError as exc:
            raise HookError(f"routing hook {self.name} returned a bad decision: {exc}") from None

    async def _call(self, ctx: HookContext) -> Any:
        """Wraps errors inside wait_for, so a hook's own TimeoutError is not taken for ours."""
        try:
            if self._is_async:
                return await self._func(ctx)
            value, error = await self._threads.start(self._func, ctx)
            if error is not None:  # any BaseException of the thread, as the hook's failure
                raise HookError(f"routing hook {self.name} failed: {_describe(error)}") from error
            return await value if inspect.isawaitable(value) else value
        except HookError:
            raise
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
