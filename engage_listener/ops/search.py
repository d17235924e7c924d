"""`engage-listener search`: look in the mailbox itself, not in the database.

Operators use it to answer "did this customer's mail ever arrive, and is it in a
case?" without SQL: the server searches (FROM, SUBJECT, SINCE, BEFORE on its own
internal dates), and each hit is checked against the ledger.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from engage_listener.mail import parser
from engage_listener.ops.terminal import visible, visible_fields
from engage_listener.sources.imap.session import ImapSession
from engage_listener.sources.imap.text import imap_date, quote
from engage_listener.store.interface import Store


@dataclass(frozen=True)
class Criteria:
    folder: str
    sender: str | None = None
    subject: str | None = None
    since: dt.date | None = None
    before: dt.date | None = None
    limit: int = 50


@dataclass(frozen=True)
class Hit:
    folder: str
    uid: int | str  # IMAP: the UID; Graph: the immutable id
    received: str | None
    sender: str
    subject: str
    size: int | None  # None: the server does not say (Graph)
    in_case: bool


def imap_criteria(c: Criteria) -> list[str]:
    """IMAP SEARCH keys; text is quoted and sent as UTF-8."""
    keys: list[str] = []
    if c.sender:
        keys += ["FROM", quote(c.sender)]
    if c.subject:
        keys += ["SUBJECT", quote(c.subject)]
    if c.since:
        keys += ["SINCE", imap_date(c.since)]
    if c.before:
        keys += ["BEFORE", imap_date(c.before)]
    return keys or ["ALL"]


async def search_mailbox(
    session: ImapSession, criteria: Criteria, *, store: Store, listener: str
) -> list[Hit]:
    """The newest `limit` matching mails of the folder, each marked in a case or not."""
    state = await session.select(criteria.folder)
    uids = (await session.search(*imap_criteria(criteria)))[-criteria.limit :]
    meta = await session.fetch_meta(uids)
    heads = dict(await session.fetch_headers(uids, "FROM SUBJECT DATE MESSAGE-ID"))
    epoch, items = str(state.uidvalidity), [str(u) for u in uids]  # IMAP's mail key
    known = {int(i) for i in await store.known_states(listener, criteria.folder, epoch, items)}
    parsed = {uid: parser.parse(heads.get(uid, b"") + b"\r\n") for uid in uids}
    ids = [m.message_id for m in parsed.values() if m.message_id]
    have = await store.known_message_ids(listener, ids)
    hits = []
    for uid in uids:
        mail, (size, date) = parsed[uid], meta.get(uid, (0, None))
        in_case = uid in known or (mail.message_id is not None and mail.message_id in have)
        sender = mail.sender.address if mail.sender else ""
        hits.append(
            Hit(
                criteria.folder,
                uid,
                date.isoformat() if date else None,
                sender,
                mail.subject,
                size,
                in_case,
            )
        )
    return hits


def render(hits: list[Hit]) -> str:
    """The hits as a table; sender and subject come from the mail, so each cell is
    `visible` (no control character reaches the operator's terminal)."""
    lines = [f"{'RECEIVED':<25} {'UID':>6} {'SIZE':>8} {'CASE':<4}  SENDER / SUBJECT"]
    for h in map(visible_fields, hits):
        uid = h.uid if isinstance(h.uid, int) else "..." + h.uid[-8:]  # Graph: the id's end
        lines.append(
            f"{h.received or '-':<25} {uid:>6} {'-' if h.size is None else h.size:>8} "
            f"{'yes' if h.in_case else 'no':<4}  {h.sender} / {h.subject}"
        )
    lines.append(f"{len(hits)} mail(s) in {visible(hits[0].folder) if hits else 'the folder'}")
    return "\n".join(lines)
