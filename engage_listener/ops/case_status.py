"""`cases close ID... [--reason]`, `cases close --idle-days N` and `cases reopen ID...`.

Each case is changed in its own transaction, and only from the status the command
expects (`Transaction.close_case`/`reopen_case` check it in the same statement), so a
command racing the daemon (a mail reopening the case meanwhile) changes nothing it did
not see.

Decisions:

* Open and pending-approval cases may be closed; rejected ones are final and closed
  ones are closed already. Only closed cases may be reopened.
* `--idle-days N` closes open cases whose newest mail came N days ago or more (cases
  without mail: their creation), with the reason "no mail for N days" unless `--reason`
  says otherwise. The idleness is checked again in the closing statement: a case that
  got mail between the look-up and the close stays open.
* A mail for a case closed later still reopens it within the listener's ReopenDays
  (see `cases.follow_ups`); closing here is not final.
* The CRM hears of each close and reopen (`case-closed`, `case-reopened`) when the case's
  listener has a Webhook that wants it: queued in the same transaction as the change.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from engage_listener.cases.webhooks import queue_event
from engage_listener.config.webhook import WebhookEventName
from engage_listener.store.interface import Store

EventsWanted = Mapping[str, Collection[WebhookEventName]]  # listener -> its Webhook's Events

__all__ = ["CaseChange", "EventsWanted", "close_cases", "close_idle", "reopen_cases"]


@dataclass(frozen=True)
class CaseChange:
    """What the command did with one case: `done` False when nothing changed; `status`
    the case's status afterwards (None: no such case); `text` the line to print."""

    case_id: int
    done: bool
    status: str | None
    text: str


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


async def _change(
    store: Store,
    case_id: int,
    reason: str | None,
    *,
    close: bool,
    idle_before: str | None = None,
    events: EventsWanted | None = None,
) -> CaseChange:
    before = await store.case_state(case_id)
    async with store.transaction() as tx:
        if close:
            done = await tx.close_case(case_id, reason, _now(), idle_before=idle_before)
        else:
            done = await tx.reopen_case(case_id, _now())
        if done and before is not None:
            wanted = (events or {}).get(before.listener, ())
            event: WebhookEventName = "case-closed" if close else "case-reopened"
            extra = {"reason": reason} if close and reason else None
            await queue_event(tx, before.listener, wanted, event, case_id, extra=extra)
    state = await store.case_state(case_id)
    if state is None:
        return CaseChange(case_id, False, None, f"{case_id}: no such case")
    what = f"case {state.case_number}"
    if done and close:
        text = f"{what} closed" + (f" ({reason})" if reason else "")
    elif done:
        text = f"{what} reopened"
    elif idle_before is not None and state.status == "open":
        text = f"{what} had mail meanwhile: left open"
    else:
        expected = "open or pending-approval" if close else "closed"
        text = f"{what} is {state.status}, not {expected}: nothing done"
    return CaseChange(case_id, done, state.status, text)


async def close_cases(
    store: Store, case_ids: Sequence[int], reason: str | None, events: EventsWanted | None = None
) -> list[CaseChange]:
    """Close each case that is open (or awaiting approval)."""
    return [
        await _change(store, case_id, reason, close=True, events=events) for case_id in case_ids
    ]


async def close_idle(
    store: Store,
    days: int,
    reason: str | None,
    now: dt.datetime | None = None,
    events: EventsWanted | None = None,
) -> list[CaseChange]:
    """Close the open cases without mail for `days` days."""
    before = ((now or dt.datetime.now(dt.UTC)) - dt.timedelta(days=days)).isoformat(
        timespec="seconds"
    )
    why = reason or f"no mail for {days} days"
    return [
        await _change(store, case_id, why, close=True, idle_before=before, events=events)
        for case_id in await store.idle_cases(before)
    ]


async def reopen_cases(
    store: Store, case_ids: Sequence[int], events: EventsWanted | None = None
) -> list[CaseChange]:
    """Open each closed case again."""
    return [await _change(store, case_id, None, close=False, events=events) for case_id in case_ids]
