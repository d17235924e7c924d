"""The Graph imitation's query options on messages: ``$filter`` on ``receivedDateTime`` and
``$search`` (KQL), as Microsoft documents them, in pure functions the server calls.

Followed (learn.microsoft.com/graph/...):

* ``$filter`` (query-parameters, filter-query-parameter): ``receivedDateTime`` compared
  with ``ge``, ``gt``, ``le``, ``lt`` or ``eq`` to an instant, clauses joined by ``and``.
  Anything else is a 400 here (the source must not rely on it without a test elsewhere).
  With ``$orderby``, the ordered property must come first in the filter, else Graph
  answers 400 ``InefficientFilter`` (user-list-messages, "Using filter and orderby in
  the same query").
* ``$search`` (search-query-parameter, "Using $search on message collections"): the value
  in double quotes (else 400), KQL restrictions ``from:``, ``subject:``, ``body:`` and
  ``received`` with ``=``/``:``, ``>=``, ``<=``, ``>``, ``<`` and a date, joined by
  ``AND`` (or a space); a bare word searches from, subject and body. Results are newest
  first (by sent date: the imitation has only the received date), at most 1,000. It
  cannot be combined with ``$filter`` or ``$orderby`` on messages: 400.
* Matching, as Exchange's content index does: case-insensitive, each searched word must
  be the beginning of a word of the property (``fact`` finds "Factura", ``tura`` does
  not); an address is a word, and so are its parts.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

SEARCH_CAP = 1000
_CLAUSE = re.compile(r"^receivedDateTime (ge|gt|le|lt|eq) (\S+)$")
_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "ge": lambda a, b: a >= b, "gt": lambda a, b: a > b, "le": lambda a, b: a <= b,
    "lt": lambda a, b: a < b, "eq": lambda a, b: a == b,
}  # fmt: skip
_TERM = re.compile(r"^(?:(from|subject|body):(\S+)|received(>=|<=|>|<|=|:)(\S+)|([^:<>=]+))$")
_DAY = {">=": "ge", "<=": "le", ">": "gt", "<": "lt", "=": "eq", ":": "eq"}


def _instant(text: str) -> dt.datetime | None:
    try:
        moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


def parse_filter(text: str) -> list[tuple[str, dt.datetime]] | None:
    """The clauses of a ``$filter`` on receivedDateTime; None when it is not one."""
    clauses = []
    for part in re.split(r"\s+and\s+", text.strip()):
        match = _CLAUSE.match(part.strip())
        moment = _instant(match.group(2)) if match else None
        if match is None or moment is None:
            return None
        clauses.append((match.group(1), moment))
    return clauses


def passes(received: dt.datetime, clauses: list[tuple[str, dt.datetime]]) -> bool:
    return all(_COMPARE[op](received, moment) for op, moment in clauses)


@dataclass(frozen=True)
class Search:
    words: tuple[tuple[str, str], ...]  # (property or "" for any, word)
    days: tuple[tuple[str, dt.date], ...]  # (comparison, day) on the received date


def parse_search(value: str) -> Search | None:
    """A quoted ``$search`` value as KQL restrictions; None when Graph would refuse it."""
    value = value.strip()
    if len(value) < 2 or not (value.startswith('"') and value.endswith('"')):
        return None
    words: list[tuple[str, str]] = []
    days: list[tuple[str, dt.date]] = []
    for term in value[1:-1].split():
        if term.upper() == "AND":
            continue
        match = _TERM.match(term)
        if match is None:
            return None
        prop, word, compare, day, bare = match.groups()
        if day is not None:
            try:
                days.append((_DAY[compare], dt.date.fromisoformat(day)))
            except ValueError:
                return None
        else:
            words.append((prop or "", (word or bare).lower()))
    return Search(tuple(words), tuple(days)) if words or days else None


def _words(text: str) -> list[str]:
    """The words the index keeps of a property: each token, and each part of an address."""
    found = []
    for token in re.split(r"[\s<>\"',;()]+", text.lower()):
        if token:
            found.append(token)
            found.extend(part for part in re.split(r"[@.\-_+]", token) if part)
    return found


def found(search: Search, fields: dict[str, str], received: dt.datetime) -> bool:
    """Whether a message (``from``, ``subject``, ``body`` texts) matches every term."""
    for prop, word in search.words:
        texts = [fields[prop]] if prop else list(fields.values())
        if not any(w.startswith(word) for text in texts for w in _words(text)):
            return False
    day = received.astimezone(dt.UTC).date()
    return all(_COMPARE[op](day, limit) for op, limit in search.days)
