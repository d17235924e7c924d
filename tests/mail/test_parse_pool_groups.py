"""A parse worker is sent several mails ahead of their answers (parse_pool's Decisions):
each mail still has its own budget, only the mail that overran is quarantined, and a
worker that ends or is killed mid-group loses no mail: the others are parsed again."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator

import pytest

from engage_listener.errors import QuarantineNow
from engage_listener.mail import parse_pool
from engage_listener.mail.parse_pool import ParsePool, Prepared, WorkerDied, prepare_mail
from tests.support.helpers import make_mail
from tests.support.hostile_mail import deep_nesting, same_name_attachments, slow_mail


@pytest.fixture
def pool() -> Iterator[ParsePool]:
    workers = ParsePool(workers=1)
    yield workers
    workers.close()


@pytest.fixture
def budget(monkeypatch: pytest.MonkeyPatch) -> float:
    """Seconds per mail, whatever its size: slow_mail(16) overruns it (~2 s here), a
    slow_mail(2) (~0.25 s) keeps it. Big mails go
    in groups too (by default one of over FLIGHT_BYTES goes alone)."""
    monkeypatch.setattr(parse_pool, "PARSE_SECONDS", 1.2)
    monkeypatch.setattr(parse_pool, "PARSE_BYTES_PER_SECOND", 1 << 40)
    monkeypatch.setattr(parse_pool, "FLIGHT_BYTES", 1 << 40)
    return 1.2


@pytest.fixture
def in_flight(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many mails a worker had been sent ahead of their answers, at each top-up."""
    seen: list[int] = []
    top_up = parse_pool._Slot._top_up

    def counting(slot: parse_pool._Slot, queue: object) -> None:
        top_up(slot, queue)  # type: ignore[arg-type]
        seen.append(len(slot.flight))

    monkeypatch.setattr(parse_pool._Slot, "_top_up", counting)
    return seen


@pytest.fixture
def at_failure(monkeypatch: pytest.MonkeyPatch) -> list[list[bytes]]:
    """The mails a worker had in hand each time it was given up (head first)."""
    seen: list[list[bytes]] = []
    fail_head = parse_pool._Slot._fail_head

    def noting(slot: parse_pool._Slot, exc: Exception) -> None:
        seen.append([job.raw for job in slot.flight])
        fail_head(slot, exc)

    monkeypatch.setattr(parse_pool._Slot, "_fail_head", noting)
    return seen


def _pids(pool: ParsePool) -> set[int]:
    return {w.process.pid for w in pool._workers if w.alive()}


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ", 1)[1][:1] not in ("Z", "X")
    except FileNotFoundError:
        return False


async def _kill_when(pool: ParsePool, ready: asyncio.Future[Prepared], not_pid: int = 0) -> int:
    """Kill the worker once `ready` is answered (the mail after it is then at the head);
    `not_pid`: wait for a worker other than that one first."""
    await ready
    while not (_pids(pool) - {not_pid}):
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.3)  # it has the slow mail in hand (that takes ~2 s)
    (pid,) = _pids(pool)
    os.kill(pid, 9)
    return pid


async def test_mails_sent_together_each_come_back_to_their_own_future(
    pool: ParsePool, in_flight: list[int]
) -> None:
    raws = [make_mail(i) for i in range(60)]
    raws[7], raws[30] = same_name_attachments(40), deep_nesting(60)
    strips = [i % 3 != 0 for i in range(len(raws))]
    futures = [pool.submit(raw, strip) for raw, strip in zip(raws, strips, strict=True)]
    answers = await asyncio.gather(*futures)
    assert answers == [prepare_mail(raw, s) for raw, s in zip(raws, strips, strict=True)]
    assert max(in_flight) == parse_pool.DEPTH  # sent ahead: groups, not one by one


async def test_in_a_group_only_the_mail_that_overran_is_quarantined(
    pool: ParsePool, budget: float, at_failure: list[list[bytes]]
) -> None:
    """Mail 2 of 4 overruns: the worker is killed with 3 and 4 sent to it already; they
    are parsed by the next worker, 1 was answered before. Only 2 is a parse-timeout."""
    raws = [make_mail(1), slow_mail(16), make_mail(3), make_mail(4)]
    await pool.prepare(make_mail(0), False)
    (first,) = _pids(pool)
    started = time.monotonic()
    got = await asyncio.gather(*(pool.submit(raw, True) for raw in raws), return_exceptions=True)
    assert time.monotonic() - started < budget + 2.0
    assert isinstance(got[1], QuarantineNow) and str(got[1]).startswith("parse-timeout: ")
    assert [got[0], got[2], got[3]] == [prepare_mail(raws[i], True) for i in (0, 2, 3)]
    assert at_failure == [raws[1:]]  # 3 and 4 were in the worker's hands with it
    assert not _running(first) and _pids(pool) and first not in _pids(pool)


async def test_the_budget_is_per_mail_not_per_group(
    pool: ParsePool, budget: float, in_flight: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Eight mails of a quarter of the budget each, sent together, take twice the budget
    in all: each is timed from the answer before it, so none is stopped."""
    raws = [slow_mail(2, subject=f"slow-{i}") for i in range(8)]
    started = time.monotonic()
    prepare_mail(raws[0], False)
    each = time.monotonic() - started  # ~0.25 s here
    monkeypatch.setattr(parse_pool, "PARSE_SECONDS", 4 * each)
    await pool.prepare(make_mail(0), False)
    started = time.monotonic()
    got = await asyncio.gather(*(pool.submit(raw, False) for raw in raws))
    assert all(isinstance(p, Prepared) and p.mail.parsed for p in got)
    assert time.monotonic() - started > 4 * each  # the group took longer than one budget
    assert max(in_flight) >= 2


async def test_a_worker_killed_mid_group_loses_no_mail(
    pool: ParsePool, budget: float, in_flight: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed from outside with the slow mail in hand and two behind it: the slow one is
    tried once more (the death may not be its doing), the others parsed again; all come
    back, each to its own future."""
    monkeypatch.setattr(parse_pool, "PARSE_SECONDS", 30.0)
    raws = [make_mail(1), slow_mail(16), make_mail(3), make_mail(4)]
    futures = [pool.submit(raw, False) for raw in raws]
    killed = await _kill_when(pool, futures[0])
    got = await asyncio.gather(*futures)
    assert got == [prepare_mail(raw, False) for raw in raws]
    assert not _running(killed) and max(in_flight) >= 3  # the slow one, 3 and 4 at least


async def test_a_mail_whose_worker_dies_twice_gets_worker_died_alone(
    pool: ParsePool, budget: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The slow mail is at the head of two workers that are killed: it gets WorkerDied
    (a plain error: the batch counts an attempt); the mails sent with it are parsed."""
    monkeypatch.setattr(parse_pool, "PARSE_SECONDS", 30.0)
    raws = [make_mail(1), slow_mail(16), make_mail(3), make_mail(4)]
    futures = [pool.submit(raw, False) for raw in raws]
    first = await _kill_when(pool, futures[0])
    await _kill_when(pool, futures[0], not_pid=first)
    got = await asyncio.gather(*futures, return_exceptions=True)
    assert isinstance(got[1], WorkerDied) and "ended" in str(got[1])
    assert [got[0], got[2], got[3]] == [prepare_mail(raws[i], False) for i in (0, 2, 3)]


async def test_close_fails_what_is_queued_or_in_flight(pool: ParsePool) -> None:
    futures = [pool.submit(slow_mail(16), False)]
    futures += [pool.submit(make_mail(i), False) for i in range(2 * parse_pool.DEPTH)]
    await asyncio.sleep(0.3)
    pool.close()
    got = await asyncio.wait_for(asyncio.gather(*futures, return_exceptions=True), 10)
    assert all(isinstance(g, WorkerDied) for g in got)
    after = pool.submit(make_mail(99), False)  # a closed pool takes nothing more
    with pytest.raises(WorkerDied, match="closed"):
        await after


async def test_a_mail_dropped_before_a_worker_got_it_is_not_parsed(
    pool: ParsePool, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent: list[bytes] = []
    top_up = parse_pool._Slot._top_up

    def noting(slot: parse_pool._Slot, queue: object) -> None:
        before = len(slot.flight)
        top_up(slot, queue)  # type: ignore[arg-type]
        sent.extend(job.raw for job in list(slot.flight)[before:])

    monkeypatch.setattr(parse_pool._Slot, "_top_up", noting)
    slow = pool.submit(slow_mail(4), False)  # ~0.5 s: the rest waits for room
    rest = [make_mail(i) for i in range(3 * parse_pool.DEPTH)]
    futures = [pool.submit(raw, False) for raw in rest]
    futures[-1].cancel()
    await slow
    await asyncio.gather(*futures[:-1])
    assert rest[-1] not in sent and rest[0] in sent
