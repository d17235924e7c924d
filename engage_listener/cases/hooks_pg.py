"""`pg:SCHEMA.NAME` routing hooks: a stored function or procedure of the PostgreSQL store's
database, the original PA_SYS_MSG_IN made real (issue 16 point 6).

The routine is called in the mail's own transaction with named arguments: those of
`SQL_PARAMETERS` it declares (case_id, message_id, customer_id, sender, subject,
is_new_case, listener, process, ...), each cast to the type it declares. A function is
`SELECT * FROM schema.name(case_id => ..., ...)`, a procedure `CALL schema.name(...)` with
its OUT arguments passed as NULL. The first row's columns named inbox, priority, tags
(text, comma-separated, or text[]), acknowledge (boolean or 0/1), process, status,
discard, quarantine are the decision; a column left out or NULL changes nothing.

Decisions:

* Like a `sql:` hook it runs inline while quick and on a thread once slow, under the same
  timeout (it is a `SqlHook` of one statement).
* The routine's arguments are read from the catalog on the first mail, not at load: the
  configuration is checked without the database. A routine that is missing, overloaded,
  or has an argument engage-listener does not pass (and no default) fails that mail with
  a clear `HookError`, as a broken procedure would; the next mail looks again.
* Values are sent as text and cast by PostgreSQL to the declared types: a Python int
  would otherwise arrive as smallint, which does not cast to boolean.
"""

from __future__ import annotations

import re
from typing import Any

from engage_listener.cases.hooks_sql import SQL_PARAMETERS, SqlHook, _Statement
from engage_listener.errors import HookError
from engage_listener.store.interface import AsyncExecute, SqlCursor

_NAME = re.compile(r"^([A-Za-z_][A-Za-z0-9_$]*)\.([A-Za-z_][A-Za-z0-9_$]*)$")
_ROUTINE = (
    "SELECT p.prokind::text, coalesce(p.proargnames, ARRAY[]::text[]),"
    " coalesce(p.proargmodes::text[], ARRAY[]::text[]),"
    " ARRAY(SELECT format_type(t, NULL) FROM unnest(coalesce(p.proallargtypes,"
    " p.proargtypes::oid[])) WITH ORDINALITY AS u(t, i) ORDER BY i), p.pronargdefaults"
    " FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace"
    " WHERE n.nspname = :schema AND p.proname = :name"
)


def load_procedure(spec: str, target: str, timeout: float) -> ProcedureHook:
    found = _NAME.match(target.strip())
    if found is None:
        raise HookError(f"routing hook {spec}: expected pg:SCHEMA.NAME, e.g. pg:crm.pa_sys_msg_in")
    return ProcedureHook(spec, found[1].lower(), found[2].lower(), timeout)


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class ProcedureHook(SqlHook):
    """A stored function or procedure as a routing hook (see the module)."""

    def __init__(self, spec: str, schema: str, name: str, timeout: float) -> None:
        super().__init__(spec, [], timeout)
        self.schema, self.routine = schema, name

    def _needed(self) -> frozenset[str]:
        """Every parameter until the routine's arguments are known (its first run)."""
        return self._names if self._statements else frozenset(SQL_PARAMETERS)

    async def _run_awaited(
        self, execute: AsyncExecute, values: dict[str, object], deadline: float
    ) -> dict[str, Any] | None:
        """The routine's one statement is resolved from the catalog (`_ROUTINE`) at the
        first run; the sync paths come here too, through `SqlHook._run_all`."""
        if not self._statements:
            found = await execute(_ROUTINE, {"schema": self.schema, "name": self.routine})
            self._statements = [self._call(found)]
            self._names = frozenset(self._statements[0].names)
        return await super()._run_awaited(execute, _as_text(values), deadline)

    def _call(self, cursor: SqlCursor) -> _Statement:
        """The CALL or SELECT for this routine, from its declaration in the catalog."""
        try:
            found, other = cursor.fetchone(), cursor.fetchone()
        finally:
            cursor.close()
        where = f"routing hook {self.name}"
        if found is None:
            raise HookError(f"{where}: no function or procedure {self.schema}.{self.routine}")
        if other is not None:
            raise HookError(f"{where}: {self.schema}.{self.routine} is overloaded; keep one")
        kind, names, modes, types, defaults = found
        if kind not in ("f", "p"):
            raise HookError(f"{where}: {self.schema}.{self.routine} is not a function or procedure")
        modes = list(modes) or ["i"] * len(types)
        inputs = [n for n, m in zip(range(len(types)), modes, strict=True) if m in "ibv"]
        optional = set(inputs[len(inputs) - int(defaults or 0) :])
        arguments: list[str] = []
        used: list[str] = []
        for index, (mode, kind_of) in enumerate(zip(modes, types, strict=True)):
            name = names[index] if index < len(names) else ""
            if mode in "ibv" and name in SQL_PARAMETERS:
                arguments.append(f"{_quoted(name)} => :{name}::{kind_of}")
                used.append(name)
            elif mode in "ibv" and index not in optional:
                known = ", ".join(SQL_PARAMETERS)
                raise HookError(
                    f"{where}: argument {name or index + 1} is not one engage-listener passes"
                    f" ({known}) and has no default"
                )
            elif mode == "o" and kind == "p":
                arguments.append(f"{_quoted(name)} => NULL::{kind_of}")
        routine = f"{_quoted(self.schema)}.{_quoted(self.routine)}({', '.join(arguments)})"
        text = f"CALL {routine}" if kind == "p" else f"SELECT * FROM {routine}"  # noqa: S608
        return _Statement(1, 1, text, tuple(used))


def _as_text(values: dict[str, object]) -> dict[str, object]:
    """Every argument as text: the CALL casts each to the routine's own type."""
    return {k: None if v is None else str(v) for k, v in values.items()}
