"""Operator control of a running listener through the store: pauses and date resets.

`engage-listener reset` and `resume` write here from a second process; the
daemon's listeners read it between batches and while waiting, so changes apply
without a restart. Dates mean 00:00 of that day in the listener's time zone.
"""

from __future__ import annotations

import datetime as dt
import zoneinfo
from dataclasses import dataclass

from engage_listener.store.interface import Store
from engage_listener.store.records import ControlField


@dataclass(frozen=True)
class Control:
    paused_until: dt.datetime | None = None
    reset_from: dt.datetime | None = None


def start_of_day(day: dt.date, time_zone: str) -> dt.datetime:
    """00:00 of `day` in `time_zone`, as an aware datetime."""
    return dt.datetime.combine(day, dt.time(0), tzinfo=zoneinfo.ZoneInfo(time_zone))


def _parse(value: object) -> dt.datetime | None:
    return dt.datetime.fromisoformat(str(value)) if value else None


async def read_control(store: Store, listener: str, now: dt.datetime) -> Control:
    """The listener's pending pause and reset; a pause that has expired is no pause."""
    row = await store.read_control(listener)
    if row is None:
        return Control()
    paused, reset = _parse(row.paused_until), _parse(row.reset_from)
    return Control(paused if paused and paused > now else None, reset)


async def _set(store: Store, listener: str, field: ControlField, value: dt.datetime | None) -> None:
    await store.set_control(listener, field, value.isoformat() if value else None)


async def request_date(
    store: Store, listener: str, day: dt.date, time_zone: str, now: dt.datetime
) -> str:
    """`reset --date`: a past day re-examines mail since then, a future day pauses until it."""
    moment = start_of_day(day, time_zone)
    if moment > now:
        await _set(store, listener, "paused_until", moment)
        return f"{listener}: intake paused until {moment.isoformat()}"
    await _set(store, listener, "paused_until", None)
    await _set(store, listener, "reset_from", moment)
    return f"{listener}: mail received since {moment.isoformat()} will be re-examined"


async def resume(store: Store, listener: str) -> str:
    await _set(store, listener, "paused_until", None)
    return f"{listener}: intake resumed"


async def reset_done(store: Store, listener: str, since: dt.datetime | None = None) -> None:
    """The reset from `since` is finished; a newer request made meanwhile stays pending."""
    if since is None:
        await _set(store, listener, "reset_from", None)
        return
    await store.clear_reset(listener, since.isoformat())
