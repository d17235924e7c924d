"""Per-listener status for `engage-listener status` and the metrics endpoint.

The daemon's supervisor writes one heartbeat row per running listener at each
tick; `status`, run as a second process, reads those rows and adds what only the
store knows (mails processed today, quarantine, pending acknowledgements). A
heartbeat older than ALIVE_SECONDS, or one whose process is gone, means the
figures are the last ones the daemon reported, not live ones. `owner` is the daemon
(host and pid) running the listener: given by the caller when several daemons share a
PostgreSQL store (their leases), else this host and the pid of the heartbeat.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import socket
import zoneinfo
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from engage_listener.intake.control import start_of_day
from engage_listener.observe.logs import scrub
from engage_listener.store.interface import Heartbeat, ListenerCounts, Store

ALIVE_SECONDS = 30.0  # well over the supervisor's 2 s tick, so a slow tick is not "down"
ERROR_CHARS = 2000
_HOST = socket.gethostname()


@dataclass(frozen=True)
class ListenerOwner:
    """The daemon that runs a listener."""

    host: str
    pid: int


@dataclass(frozen=True)
class ListenerStatus:
    listener: str
    state: str  # the worker's state; "stopped" when no heartbeat exists
    alive: bool  # heartbeat younger than ALIVE_SECONDS and its process exists
    last_success_at: str | None  # ISO UTC
    processed_today: int  # ledger rows since 00:00 in the listener's zone, not quarantined
    backlog: int | None  # mails waiting on the server, as last seen
    oldest_unprocessed_age: float | None  # seconds
    quarantined: int  # held in quarantine
    pending_acks: int  # acknowledgements not yet handed to SMTP
    last_error: str | None
    paused_until: str | None  # ISO, aware
    heartbeat_at: str | None  # ISO UTC
    processed_total: int = 0  # every ledger row not quarantined: a true counter
    owner: ListenerOwner | None = None  # None: no daemon holds it


def _iso(value: object) -> str | None:
    """Epoch seconds, an aware datetime or an ISO string, as ISO text."""
    if value is None or value == "":
        return None
    if isinstance(value, dt.datetime):
        return value.isoformat(timespec="seconds")
    if isinstance(value, int | float):
        return dt.datetime.fromtimestamp(value, dt.UTC).isoformat(timespec="seconds")
    return str(value)


def _parse(value: object) -> dt.datetime | None:
    if not value:
        return None
    moment = dt.datetime.fromisoformat(str(value))
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


async def write_heartbeats(
    store: Store,
    workers: Mapping[str, Any],
    *,
    paused: Mapping[str, str | None] | None = None,
    pid: int | None = None,
) -> None:
    """Record every running worker in one short transaction and forget the others.

    Workers need `state`, and may have `last_success_at` (epoch), `backlog`,
    `last_error`, `paused_until` and `oldest_unprocessed` (epoch, datetime or ISO);
    missing ones are stored as NULL.
    """
    paused = paused or {}
    pid = os.getpid() if pid is None else pid
    now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    beats = []
    for lid, worker in workers.items():
        error = getattr(worker, "last_error", None)
        backlog = getattr(worker, "backlog", None)
        beats.append(
            Heartbeat(
                listener=lid,
                state=str(getattr(worker, "state", "starting")),
                pid=pid,
                last_success_at=_iso(getattr(worker, "last_success_at", None)),
                last_error=scrub(str(error))[:ERROR_CHARS] if error else None,  # scrub, then cut
                backlog=None if backlog is None else int(backlog),
                oldest_unprocessed=_iso(getattr(worker, "oldest_unprocessed", None)),
                paused_until=_iso(paused.get(lid) or getattr(worker, "paused_until", None)),
                updated_at=now,
            )
        )
    await store.write_heartbeats(beats)


def _pid_exists(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OSError:
        return False
    return True


async def read_status(
    store: Store,
    listener_ids: Sequence[str],
    *,
    now: dt.datetime | None = None,
    tz: str | Mapping[str, str] = "UTC",
    owners: Mapping[str, ListenerOwner] | None = None,
) -> list[ListenerStatus]:
    """One status per listener id, in the order given; "today" starts at 00:00 in `tz`
    (one zone, or a zone per listener id, UTC for ids it lacks). `owners`: who holds each
    listener (several daemons); None: one daemon on this host, the heartbeat's pid."""
    now = now or dt.datetime.now(dt.UTC)
    beats = {b.listener: b for b in await store.heartbeats()}
    control = await store.paused_until()
    result = []
    for lid in listener_ids:
        zone = tz if isinstance(tz, str) else tz.get(lid, "UTC")
        local_day = now.astimezone(zoneinfo.ZoneInfo(zone)).date()
        since = start_of_day(local_day, zone).astimezone(dt.UTC).isoformat(timespec="seconds")
        counts = await store.listener_counts(lid, since)
        # Several daemons: a pid of another host says nothing here; its lease does.
        remote = owners is not None and (lid not in owners or owners[lid].host != _HOST)
        row = _status(lid, beats.get(lid), control.get(lid), now, counts, remote=remote)
        result.append(dataclasses.replace(row, owner=_owner(lid, row, beats, owners)))
    return result


def _owner(
    lid: str,
    row: ListenerStatus,
    beats: Mapping[str, Heartbeat],
    owners: Mapping[str, ListenerOwner] | None,
) -> ListenerOwner | None:
    if owners is not None:
        return owners.get(lid)
    beat = beats.get(lid)
    return ListenerOwner(_HOST, beat.pid) if beat and row.alive else None


def _status(
    lid: str,
    beat: Heartbeat | None,
    control_pause: object,
    now: dt.datetime,
    counts: ListenerCounts,
    *,
    remote: bool = False,
) -> ListenerStatus:
    requested = _parse(control_pause)
    pause = _iso(requested) if requested and requested > now else None
    today, total = counts.processed_today, counts.processed_total
    held, acks = counts.quarantined, counts.pending_acks
    if beat is None:
        return ListenerStatus(
            lid, "stopped", False, None, today, None, None, held, acks, None, pause, None, total
        )
    stamp = _parse(beat.updated_at)
    fresh = bool(stamp and (now - stamp).total_seconds() < ALIVE_SECONDS)
    alive = fresh and (remote or _pid_exists(beat.pid))
    oldest_at = _parse(beat.oldest_unprocessed)
    backlog = beat.backlog
    age = max(0.0, (now - oldest_at).total_seconds()) if oldest_at and backlog != 0 else None
    return ListenerStatus(
        listener=lid,
        state=beat.state,
        alive=alive,
        last_success_at=beat.last_success_at,
        processed_today=today,
        backlog=backlog,
        oldest_unprocessed_age=age,
        quarantined=held,
        pending_acks=acks,
        last_error=beat.last_error,
        paused_until=beat.paused_until or pause,
        heartbeat_at=beat.updated_at,
        processed_total=total,
    )


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    for unit, size, sub, sub_size in (("d", 86400, "h", 3600), ("h", 3600, "m", 60)):
        if s >= size:
            return f"{s // size}{unit} {s % size // sub_size}{sub}"
    return f"{s // 60}m {s % 60}s" if s >= 60 else f"{s}s"


def _state(row: ListenerStatus) -> str:
    text = f"paused until {row.paused_until}" if row.paused_until else row.state
    if row.heartbeat_at is None:
        return "not running" if not row.paused_until else f"not running, {text}"
    return text if row.alive else f"down (last: {text})"


def render_status(rows: list[ListenerStatus]) -> str:
    """A table for people, with each last error in full (one line) below it."""
    header = ("LISTENER", "STATE", "LAST SUCCESS", "TODAY", "BACKLOG", "OLDEST", "QUAR", "ACKS")
    table = [header]
    for r in rows:
        table.append(
            (
                r.listener,
                _state(r),
                r.last_success_at or "never",
                str(r.processed_today),
                "-" if r.backlog is None else str(r.backlog),
                _duration(r.oldest_unprocessed_age),
                str(r.quarantined),
                str(r.pending_acks),
            )
        )
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in table
    ]
    for r in rows:
        if r.last_error:
            error = " ".join(r.last_error.split())[:300]
            lines.append(f"{r.listener}: last error: {error}")
    if rows and not any(r.alive for r in rows):
        lines.append(f"the daemon is not running (no heartbeat in the last {ALIVE_SECONDS:.0f} s)")
    return "\n".join(lines) + "\n"
