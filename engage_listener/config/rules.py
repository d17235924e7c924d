"""The Rules block of a listener: routing without code, read and checked.

Part of the configuration (see `config`), kept apart from `load` because a rule has more
to check than the XSD 1.0 can say: exactly one operator per Match, Field or Header,
regexes that compile on the linear-time engine, domains without `@`, a rule with at
least one Match and one action, names unique in the block. `cases.rules` evaluates them.

Decisions:
- Regexes run on RE2 (google-re2), a linear-time engine, never on Python's `re`: a
  backtracking engine takes exponential time on a pattern such as `(a+)+$` against a long
  run of a's, and a time limit cannot stop `re` (it holds the GIL inside one C call), so
  one hostile mail could hang the daemon. The price is no backreferences and no
  lookaround: a pattern using them is a configuration error saying so, never a silent
  fall-back to a backtracking engine. A pattern RE2 refuses is tried with Python's `re`
  for the wording only: wrong for both, it "does not compile"; valid for Python, it "uses
  something the linear-time engine (RE2) cannot run". (RE2 accepts syntax `re` does not,
  e.g. `\\p{L}` and a bare `(?-i)`, so `re` never gets to refuse a pattern RE2 runs.)
- RE2 with Python: `(?i)`, `(?s)`, `(?m)` and `(?-i)` work inline, and case-insensitive
  matching folds Unicode (`É` matches `é`, not `ß` against `SS`, like `re`). Unlike
  Python, `\\w`, `\\d`, `\\b` are ASCII only (`\\w+` finds `cole` in `école`): write
  `\\p{L}` for any letter. CaseSensitive (default false) is RE2's case_sensitive option,
  so `(?i)` in a pattern is allowed but not needed.
- Only the pattern text is kept in the model (`MatchConfig.value`): the evaluator
  compiles it once through `compile_pattern` (cached), the same function check-config
  uses, so what check-config accepts is exactly what runs.
- A rule may hold its Match and action elements in any order (the XSD is a choice);
  actions apply in document order. The actions that can only mean one thing once
  (everything but AddTag) may appear once per rule, and Discard with Quarantine in one
  rule is an error: the operator would not know which wins.
- Contains and Regex keep their value as written (a space in `Contains=" re "` is meant);
  the other values are trimmed, and a Contains or Regex of spaces only is "empty".
- A Quarantine without Reason gets `rule NAME`; duplicate rule names are compared
  case-insensitively (they are shown side by side by `rules test` and logs).
"""

from __future__ import annotations

import functools
import re
from collections import Counter
from collections.abc import Callable
from typing import Any, Protocol, cast

from lxml import etree

from engage_listener.config.model import (
    RULE_FIELDS,
    RULE_OPERATORS,
    AddTag,
    Discard,
    MatchConfig,
    NoAcknowledgement,
    Quarantine,
    RuleAction,
    RuleConfig,
    RuleField,
    RuleOperator,
    SetInbox,
    SetPriority,
    SetProcess,
    Stop,
)
from engage_listener.config.xmltree import children, line, local, text
from engage_listener.errors import ConfigProblem

ACTIONS = (
    "SetProcess",
    "SetInbox",
    "SetPriority",
    "AddTag",
    "NoAcknowledgement",
    "Discard",
    "Quarantine",
    "Stop",
)
_ONCE = tuple(a for a in ACTIONS if a != "AddTag")
_ADDRESS_FIELDS = ("From", "To", "Cc")
_HEADER_NAME = re.compile(r"[!-9;-~]+")  # RFC 5322 field name: printable ASCII but ':'


class Pattern(Protocol):
    """The part of a compiled RE2 pattern the evaluator uses."""

    def search(self, text: str) -> object | None: ...


class PatternError(ValueError):
    """A pattern that cannot be used, with the reason an operator can act on."""


@functools.lru_cache(maxsize=512)
def compile_pattern(pattern: str, case_sensitive: bool = False) -> Pattern:
    """The pattern compiled by RE2; PatternError when it does not compile anywhere, or
    uses what a linear-time engine cannot run (backreferences, lookaround)."""
    import re2  # noqa: PLC0415 - 30 ms at start-up, paid only by a configuration with a Regex

    options = re2.Options()
    options.log_errors = False  # RE2 would print to stderr; the reason is raised instead
    options.case_sensitive = case_sensitive
    try:
        return cast(Pattern, re2.compile(pattern, options))
    except re2.error as exc:
        reason = _reason(exc)
    try:
        re.compile(pattern)
    except re.error:
        raise PatternError(f"regular expression does not compile: {reason}") from None
    raise PatternError(
        f"regular expression uses something the linear-time engine (RE2) cannot run "
        f"({reason}); backreferences and lookaround are not supported, so a mail can "
        "never make a rule take exponential time"
    )


def _reason(exc: Exception) -> str:
    arg: Any = exc.args[0] if exc.args else exc
    return arg.decode("utf-8", "replace") if isinstance(arg, bytes) else str(arg)


# ------------------------------------------------------------------ loading


def rules_config(node: etree._Element) -> tuple[RuleConfig, ...]:
    """The rules of a valid `<Rules>` block, in order."""
    return tuple(_rule(rule) for rule in children(node) if local(rule.tag) == "Rule")


def _rule(node: etree._Element) -> RuleConfig:
    name = (node.get("Name") or "").strip()
    matches: list[MatchConfig] = []
    actions: list[RuleAction] = []
    for child in children(node):
        kind = local(child.tag)
        if kind == "Match":
            matches.append(_match(child))
        elif kind in _BUILD:
            actions.append(_BUILD[kind](child, name))
    return RuleConfig(name, tuple(matches), tuple(actions), line(node))


def _match(node: etree._Element) -> MatchConfig:
    operator = _operators(node)[0]
    value = node.get(operator) or ""
    value = value if operator in ("Contains", "Regex") else value.strip()  # spaces: as meant
    field = (node.get("Field") or "").strip() or None
    header = (node.get("Header") or "").strip() or None
    return MatchConfig(
        operator=operator,
        value=value.lower() if operator == "Exists" else value,
        field=cast(RuleField | None, field),
        header=header,
        case_sensitive=(node.get("CaseSensitive") or "").strip().lower() == "true",
        source_line=line(node),
    )


_BUILD: dict[str, Callable[[etree._Element, str], RuleAction]] = {
    "SetProcess": lambda n, _: SetProcess(text(n)),
    "SetInbox": lambda n, _: SetInbox(text(n)),
    "SetPriority": lambda n, _: SetPriority(int(text(n))),
    "AddTag": lambda n, _: AddTag(text(n)),
    "NoAcknowledgement": lambda n, _: NoAcknowledgement(),
    "Discard": lambda n, _: Discard(),
    "Quarantine": lambda n, name: Quarantine((n.get("Reason") or "").strip() or f"rule {name}"),
    "Stop": lambda n, _: Stop(),
}


def _operators(node: etree._Element) -> list[RuleOperator]:
    return [op for op in RULE_OPERATORS if node.get(op) is not None]


# ------------------------------------------------------------------ checking


def rules_problems(node: etree._Element, file: str) -> list[ConfigProblem]:
    """Everything wrong in a `<Rules>` block the XSD cannot say; tolerant of invalid trees."""
    problems: list[ConfigProblem] = []
    seen: dict[str, int] = {}
    for rule in (r for r in children(node) if local(r.tag) == "Rule"):
        name = (rule.get("Name") or "").strip()
        if name and name.casefold() in seen:
            message = f"duplicate rule name '{name}' (first on line {seen[name.casefold()]})"
            problems.append(ConfigProblem(file, line(rule), "Rule", message))
        seen.setdefault(name.casefold(), line(rule))
        problems.extend(_rule_problems(rule, name, file))
    return problems


def _rule_problems(rule: etree._Element, name: str, file: str) -> list[ConfigProblem]:
    kinds = Counter(local(c.tag) for c in children(rule))
    found: list[str] = []
    if not kinds["Match"]:
        found.append("has no Match; give one or more")
    if not any(kinds[a] for a in ACTIONS):
        found.append(f"has no action; give one or more of {', '.join(ACTIONS)}")
    found += [f"has {kinds[a]} {a} elements; give at most one" for a in _ONCE if kinds[a] > 1]
    if kinds["Discard"] and kinds["Quarantine"]:
        found.append("has both Discard and Quarantine; give one")
    problems = [ConfigProblem(file, line(rule), "Rule", f"rule '{name}' {m}") for m in found]
    for match in (c for c in children(rule) if local(c.tag) == "Match"):
        problems += [ConfigProblem(file, line(match), "Match", m) for m in match_problems(match)]
    return problems


def match_problems(node: etree._Element) -> list[str]:
    """What is wrong with one `<Match>` element (unknown Field values are the XSD's)."""
    field, header = node.get("Field"), node.get("Header")
    if field is None and header is None:
        return ["give Field (From, To, Cc, Subject, Body) or Header"]
    if field is not None and header is not None:
        return ["give Field or Header, not both"]
    problems: list[str] = []
    if header is not None and not _HEADER_NAME.fullmatch(header.strip()):
        problems.append(f"Header '{header}' is not a header name (e.g. X-Spam-Flag)")
    operators = _operators(node)
    if len(operators) != 1:
        given = (
            f"{len(operators)} operators ({', '.join(operators)})" if operators else "no operator"
        )
        return [
            *problems,
            f"{given}; give exactly one of {', '.join(RULE_OPERATORS)} "
            "(two conditions: two Match elements)",
        ]
    field = (field or "").strip()
    problems += _operator_problems(operators[0], (node.get(operators[0]) or "").strip(), field)
    if operators[0] == "Regex" and not problems:
        sensitive = (node.get("CaseSensitive") or "").strip().lower() == "true"
        try:
            compile_pattern(node.get("Regex") or "", sensitive)
        except PatternError as exc:
            problems.append(str(exc))
    return problems


def _operator_problems(operator: RuleOperator, value: str, field: str) -> list[str]:
    """The operator's value: not empty, a bare domain for Domain on an address field."""
    if operator in ("Contains", "Regex", "Domain") and not value:
        return [f"{operator} is empty"]
    if operator != "Domain":
        return []
    problems = []
    if field and field in RULE_FIELDS and field not in _ADDRESS_FIELDS:
        problems.append(f"Domain applies to From, To, Cc or a Header, not to {field}")
    if "@" in value or value.startswith(".") or len(value.split()) > 1:
        problems.append(
            f"Domain '{value}' must be a bare domain such as example.org "
            "(no @, no leading dot: subdomains match too)"
        )
    return problems
