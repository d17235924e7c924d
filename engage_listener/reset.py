"""Re-examining the output folder after `engage-listener reset --date` (a past day).

Mail that was moved on without a case (by hand, by another tool, or before a
restore of the store) is ingested; mail the ledger already has, by Message-ID or
by its exact bytes, is never made into a second case. It stays where it is.
"""

from __future__ import annotations

import datetime as dt
import re

from .batch import Handler
from .imap import ImapSession
from .imap_text import imap_date
from .store import LedgerKey, Store

_MESSAGE_ID = re.compile(rb"^Message-ID:\s*<?([^>\r\n]+)>?", re.IGNORECASE | re.MULTILINE)
# The westernmost zone in use (UTC-12): a moment's date there is never later than in
# the server's zone, whatever that zone is.
_WESTERNMOST = dt.timezone(dt.timedelta(hours=-12))


async def reset_folder(
    session: ImapSession,
    folder: str,
    since: dt.datetime,
    listener: str,
    store: Store,
    handler: Handler,
) -> int:
    """Ingest every mail of `folder` received since `since` that is not in the ledger yet."""
    state = await session.select(folder)
    candidates = await session.search("SINCE", imap_date(search_day(since)))
    meta = await session.fetch_meta(candidates)
    uids = [u for u in candidates if (d := meta.get(u, (0, None))[1]) is None or d >= since]
    known = await store.known_states(listener, folder, state.uidvalidity, uids)
    unknown = [u for u in uids if u not in known]
    ids = {
        uid: _message_id(head) for uid, head in await session.fetch_headers(unknown, "MESSAGE-ID")
    }
    have = await store.known_message_ids(listener, [i for i in ids.values() if i])
    todo = [u for u in unknown if not ids.get(u) or ids[u] not in have]
    for uid, raw in await session.fetch_bodies(todo):
        await handler.ingest(LedgerKey(listener, folder, state.uidvalidity, uid), raw)
    return len(todo)


def search_day(since: dt.datetime) -> dt.date:
    """The day for IMAP `SEARCH SINCE`, which compares bare dates in the server's own time
    zone (unknown here), so early enough for any zone: 00:00 in Tokyo is still the day
    before on a UTC server. The exact `since` is then checked on each INTERNALDATE."""
    return since.astimezone(_WESTERNMOST).date()


def _message_id(header: bytes) -> str | None:
    match = _MESSAGE_ID.search(header)
    return match.group(1).decode("ascii", "replace").strip() if match else None
