"""`engage-listener search` on a Graph listener: Graph searches the mailbox, the ledger
says which mail is in a case. The same criteria, hits and output as IMAP's (`ops.search`).

Decisions:

* Dates only (or nothing): ``$filter`` on ``receivedDateTime`` (``ge`` since, ``lt``
  before) with ``$orderby=receivedDateTime desc`` and ``$top`` = the limit: exact, one
  request (paged past Graph's 1,000). Graph allows ``$orderby`` with ``$filter`` when
  the ordered property is filtered on first, as here.
* A sender or a subject: ``$search`` with KQL (``from:word``, ``subject:word``), since
  ``$filter`` on messages cannot find part of an address or a subject. Graph refuses
  ``$search`` together with ``$filter`` or ``$orderby`` on messages and returns at most
  1,000 mails, newest sent first; the dates then go into the KQL too (``received>=``,
  ``received<=``, a day wider on each side, as the mailbox's zone is not ours), and the
  exact bounds are checked here on ``receivedDateTime``. Microsoft's search matches
  words and the beginnings of words, not any part of a word as IMAP's SEARCH does.
* Days are 00:00 in the listener's TimeZone (IMAP's SINCE/BEFORE use the server's zone,
  which Graph does not expose): the same days `reset --date` and ReadFromDate mean.
* In a case: the mail's ledger key (listener, input folder id, "", immutable id; an
  immutable id is the same in every folder, so a hit in the output folder is found) or
  its Message-ID known to the listener. `uid` is the immutable id; `size` is None (a
  Graph message has no size property in v1.0).
* The hits are shown oldest first, the newest `limit` of them, as for IMAP.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from engage_listener.config.model import ListenerConfig
from engage_listener.intake.control import start_of_day
from engage_listener.ops.search import Criteria, Hit
from engage_listener.sources.graph.batch import EPOCH, LIST_SELECT, received
from engage_listener.sources.graph.folders import resolve_folder
from engage_listener.sources.graph.http import GraphSession
from engage_listener.store.interface import Store

SEARCH_CAP = 1000  # Graph returns at most this many mails for one $search


def _stamp(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _kql_terms(prop: str, value: str) -> list[str]:
    """One KQL restriction a word (all must match): no quoting to get wrong, and the
    characters KQL gives a meaning (quotes, parentheses, colons, backslashes) are spaces."""
    words = value.translate(str.maketrans('"()\\:', "     ")).split()
    return [f"{prop}:{word}" for word in words]


def search_query(c: Criteria, zone: str) -> dict[str, str]:
    """The query parameters of the request (see the module docstring)."""
    since = start_of_day(c.since, zone) if c.since else None
    before = start_of_day(c.before, zone) if c.before else None
    if not c.sender and not c.subject:
        bounds = [f"receivedDateTime ge {_stamp(since)}"] if since else []
        bounds += [f"receivedDateTime lt {_stamp(before)}"] if before else []
        top = str(max(1, min(c.limit, SEARCH_CAP)))
        query = {"$orderby": "receivedDateTime desc", "$top": top, "$select": LIST_SELECT}
        return {**query, "$filter": " and ".join(bounds)} if bounds else query
    terms = _kql_terms("from", c.sender or "") + _kql_terms("subject", c.subject or "")
    if since:
        terms.append(f"received>={(since.astimezone(dt.UTC).date() - dt.timedelta(1))}")
    if before:
        terms.append(f"received<={(before.astimezone(dt.UTC).date() + dt.timedelta(1))}")
    return {"$search": '"' + " AND ".join(terms) + '"', "$top": "100", "$select": LIST_SELECT}


def _within(row: dict[str, Any], c: Criteria, zone: str) -> bool:
    when = received(row.get("receivedDateTime"))
    if when is None:
        return True
    if c.since and when < start_of_day(c.since, zone):
        return False
    return not (c.before and when >= start_of_day(c.before, zone))


async def _rows(session: GraphSession, folder_id: str, c: Criteria,
                zone: str) -> list[dict[str, Any]]:  # fmt: skip
    """The newest `limit` matching rows, newest first (paged: $top is at most 1,000)."""
    where = f"{session.base}/mailFolders/{folder_id}/messages"
    query = search_query(c, zone)
    searching = "$search" in query
    enough = SEARCH_CAP if searching else c.limit
    found: list[dict[str, Any]] = []
    async for page in session.pages(where, query):
        found.extend(r for r in page.get("value", []) if isinstance(r, dict) and "id" in r)
        if len(found) >= enough:
            break
    if searching:
        found = [r for r in found if _within(r, c, zone)]
        found.sort(key=lambda r: str(r.get("receivedDateTime") or ""), reverse=True)
    return found[: c.limit]


async def search_graph(
    session: GraphSession, cfg: ListenerConfig, criteria: Criteria, *, store: Store
) -> list[Hit]:
    """The newest `limit` matching mails of the folder, oldest first, each marked in a case
    or not (see the module docstring)."""
    folder_id = await resolve_folder(session, criteria.folder, "folder")
    input_id = await resolve_folder(session, cfg.input_folder, "input folder")
    rows = list(reversed(await _rows(session, folder_id, criteria, cfg.time_zone)))
    ids = [str(r["id"]) for r in rows]
    known = await store.known_states(cfg.id, input_id, EPOCH, ids)
    message_ids = [str(r["internetMessageId"]) for r in rows if r.get("internetMessageId")]
    have = await store.known_message_ids(cfg.id, message_ids)
    hits = []
    for row in rows:
        sender = ((row.get("from") or {}).get("emailAddress") or {}).get("address", "")
        when = received(row.get("receivedDateTime"))
        in_case = str(row["id"]) in known or row.get("internetMessageId") in have
        hits.append(Hit(criteria.folder, str(row["id"]), when.isoformat() if when else None,
                        str(sender), str(row.get("subject") or ""), None, in_case))  # fmt: skip
    return hits
