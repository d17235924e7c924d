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
    rows = await store.query(
        "SELECT paused_until, reset_from FROM listener_control WHERE listener = ?", (listener,)
    )
    if not rows:
        return Control()
    paused, reset = _parse(rows[0][0]), _parse(rows[0][1])
    return Control(paused if paused and paused > now else None, reset)


async def _set(store: Store, listener: str, column: str, value: dt.datetime | None) -> None:
    assert column in {"paused_until", "reset_from"}
    stamp = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    async with store.transaction() as tx:
        await tx.execute(
            f"INSERT INTO listener_control (listener, {column}, updated_at) VALUES (?, ?, ?)"  # noqa: S608
            f" ON CONFLICT (listener) DO UPDATE SET {column} = excluded.{column},"
            " updated_at = excluded.updated_at",
            (listener, value.isoformat() if value else None, stamp),
        )


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
    stamp = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    async with store.transaction() as tx:
        await tx.execute(
            "UPDATE listener_control SET reset_from = NULL, updated_at = ?"
            " WHERE listener = ? AND reset_from = ?",
            (stamp, listener, since.isoformat()),
        )
