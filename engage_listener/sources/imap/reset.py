"""Re-examining the output folder after `engage-listener reset --date` (a past day).

Mail that was moved on without a case (by hand, by another tool, or before a
restore of the store) is ingested; mail the ledger already has is never made into a
second case, and it stays where it is.

Decisions:
- Skipped by the ledger, not by Message-ID: a mail whose ledger key (this folder, its
  UIDVALIDITY and UID) is known is not fetched; any other is fetched and the case engine
  recognises a copy of a mail it already has by its exact bytes (`find_duplicate`, the
  SHA-256 and Message-ID), recording only a ledger row. Two different mails that share
  a Message-ID (a careless sender, a forged one) are both kept. The price is fetching
  the folder's mail once per reset; it is fetched in chunks, never all at once.
- Each mail goes through the batch's own path (`Batch.run_in_place`): chunks of
  CHUNK_COUNT / CHUNK_BYTES, a failure counted as an attempt, quarantine to the error
  folder at MaxAttempts. A mail that failed below MaxAttempts keeps the reset pending
  (the listener tries it again at its next control check, after a normal batch), so
  it never holds up intake and is never lost.
"""

from __future__ import annotations

import asyncio
import datetime as dt

from engage_listener.intake.contract import Handler
from engage_listener.observe.logs import Logger
from engage_listener.sources.imap.batch import Batch, BatchResult, Destination
from engage_listener.sources.imap.session import ImapSession
from engage_listener.sources.imap.text import imap_date
from engage_listener.store.interface import Store

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
    *,
    destination: Destination,
    stop: asyncio.Event,
    log: Logger,
) -> BatchResult:
    """Ingest every mail of `folder` received since `since` that the ledger lacks.

    `destination` gives the error folder and MaxAttempts; its output folder is unused
    (committed mail stays in `folder`). The result's `failed` counts mails to try again.
    """
    state = await session.select(folder)
    candidates = await session.search("SINCE", imap_date(search_day(since)))
    meta = await session.fetch_meta(candidates)
    uids = [u for u in candidates if (d := meta.get(u, (0, None))[1]) is None or d >= since]
    sizes = {uid: size for uid, (size, _) in meta.items()}
    batch = Batch(session, state, listener, store, handler, destination, stop, log)
    return await batch.run_in_place(uids, sizes)


def search_day(since: dt.datetime) -> dt.date:
    """The day for IMAP `SEARCH SINCE`, which compares bare dates in the server's own time
    zone (unknown here), so early enough for any zone: 00:00 in Tokyo is still the day
    before on a UTC server. The exact `since` is then checked on each INTERNALDATE."""
    return since.astimezone(_WESTERNMOST).date()
