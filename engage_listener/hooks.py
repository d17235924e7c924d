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
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from .errors import HookError
from .hook_types import (
    DECISION_FIELDS,
    CaseView,
    CustomerView,
    HookContext,
    MessageView,
    RoutingDecision,
    RoutingHook,
    SqlExecutor,
    as_decision,
)
from .hooks_sql import SQL_PARAMETERS, SqlHook, load_sql

__all__ = [
    "DECISION_FIELDS",
    "SQL_PARAMETERS",
    "CaseView",
    "CustomerView",
    "HookContext",
    "MessageView",
    "PythonHook",
    "RoutingDecision",
    "RoutingHook",
    "SqlExecutor",
    "SqlHook",
    "load_hook",
]

_FORMS = "python:package.module:function or sql:path/to/procedure.sql"


def load_hook(spec: str, base_dir: Path, timeout: float) -> RoutingHook:
    """The hook a RoutingHook setting names, checked now so mistakes surface at start-up."""
    spec = spec.strip()
    kind, _, target = spec.partition(":")
    if timeout <= 0:
        raise HookError(f"routing hook {spec}: the timeout must be positive, not {timeout}")
    if kind == "python":
        return _load_python(spec, target, base_dir, timeout)
    if kind == "sql" and target.strip():
        return load_sql(spec, base_dir / Path(target.strip()).expanduser(), timeout)
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
            return as_decision(value)
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
