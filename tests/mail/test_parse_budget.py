"""No mail holds the parser: duplicate names are renamed in linear time, attachments are
capped, and every mail is parsed in a worker process that is killed past its budget."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from engage_listener.cases.engine import CaseEngine, EngineSettings
from engage_listener.errors import QuarantineNow
from engage_listener.mail import fields as mime_fields
from engage_listener.mail import parse_pool, parse_worker
from engage_listener.mail.parse_pool import ParsePool, Prepared, prepare_mail
from engage_listener.mail.parser import parse
from engage_listener.mail.parts import MAX_ATTACHMENTS, REST_NAME
from engage_listener.store.interface import MailKey
from engage_listener.store.sqlite.store import SqliteStore
from tests.support.helpers import db_rows, make_mail
from tests.support.hostile_mail import deep_nesting, many_parts, same_name_attachments, slow_mail


@pytest.fixture
def pool() -> Iterator[ParsePool]:
    workers = ParsePool(workers=1)
    yield workers
    workers.close()


@pytest.fixture
def small_budget(monkeypatch: pytest.MonkeyPatch) -> float:
    """A budget the slow mail overruns (it takes ~2 s) and every other mail here keeps."""
    monkeypatch.setattr(parse_pool, "PARSE_SECONDS", 0.5)
    monkeypatch.setattr(parse_pool, "PARSE_BYTES_PER_SECOND", 1 << 40)
    return 0.5


def test_duplicate_attachment_names_are_made_unique_with_one_try_each(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """400 attachments of one long name: each duplicate costs one new name, not one try per
    name before it (quadratic: 80,000 tries; 1,000 of them took 21 s)."""
    calls = 0
    fit = mime_fields._fit

    def counting(stem: str, ext: str, suffix: str) -> str:
        nonlocal calls
        calls += 1
        return fit(stem, ext, suffix)

    monkeypatch.setattr(mime_fields, "_fit", counting)
    mail = parse(same_name_attachments(400))
    names = [a.filename for a in mail.attachments]
    assert len(names) == len(set(names)) == 400
    assert names[1].endswith(" (2).pdf") and names[-1].endswith(" (400).pdf")
    assert calls <= 2 * 400


def test_the_mail_of_the_issue_parses_in_well_under_a_second() -> None:
    """The reproduced mail (1,000 same-name attachments) took 12.9 s here before."""
    started = time.monotonic()
    mail = parse(same_name_attachments(1000), strip=True)
    assert time.monotonic() - started < 2.0
    assert mail.parsed and len(mail.attachments) == MAX_ATTACHMENTS + 1


def test_attachments_past_the_cap_are_kept_as_one_opaque_part_and_flagged() -> None:
    raw = many_parts(MAX_ATTACHMENTS + 700)
    mail = parse(raw, strip=True)
    assert len(mail.attachments) == MAX_ATTACHMENTS + 1
    rest = mail.attachments[-1]
    assert rest.filename == REST_NAME and rest.content_type == "text/plain"
    assert rest.payload.count(b"Content-Type: application/octet-stream") == 700  # all of them
    assert raw.find(rest.payload) > 0  # their MIME source, as it came
    assert any(f"more than {MAX_ATTACHMENTS} attachments" in d for d in mail.defects)
    assert mail.stripped is not None and REST_NAME.encode() in mail.stripped
    assert mail.stripped.count(b"Content-Type: application/octet-stream") == 0  # all noted


async def test_the_parse_runs_in_a_worker_process_and_crosses_back_intact(
    pool: ParsePool,
) -> None:
    for raw in (make_mail(1), same_name_attachments(50), deep_nesting(80)):
        for strip in (True, False):
            got = await pool.prepare(raw, strip)
            assert got == prepare_mail(raw, strip)  # headers, attachments, stripped: all
    assert os.getpid() not in _worker_pids(pool) and len(_worker_pids(pool)) == 1


async def test_a_mail_over_its_budget_is_stopped_and_quarantined_parse_timeout(
    pool: ParsePool, small_budget: float
) -> None:
    await pool.prepare(make_mail(1), True)
    (stuck,) = _worker_pids(pool)
    started = time.monotonic()
    with pytest.raises(QuarantineNow, match=r"^parse-timeout: "):
        await pool.prepare(slow_mail(), True)
    assert time.monotonic() - started < small_budget + 2.0
    assert not _running(stuck)  # killed, not left parsing
    after = await pool.prepare(make_mail(2), True)  # a new worker takes the next mail
    assert isinstance(after, Prepared) and after.mail.subject.startswith("Consulta 2")
    assert _worker_pids(pool) and stuck not in _worker_pids(pool)


async def test_the_event_loop_runs_while_a_worker_parses(
    pool: ParsePool, small_budget: float
) -> None:
    """The slow mail costs its budget in the worker; the loop keeps ticking meanwhile."""
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    ticker = asyncio.create_task(tick())
    with pytest.raises(QuarantineNow):
        await pool.prepare(slow_mail(), False)
    ticker.cancel()
    assert ticks >= 20  # ~50 in 0.5 s; a parse on the loop would allow none


async def test_a_worker_killed_from_outside_is_replaced(pool: ParsePool) -> None:
    await pool.prepare(make_mail(1), False)
    (pid,) = _worker_pids(pool)
    os.kill(pid, 9)
    await asyncio.sleep(0.1)
    got = await pool.prepare(make_mail(2), False)  # the mail is not blamed for it
    assert got.mail.parsed and pid not in _worker_pids(pool)


async def test_the_engine_quarantines_the_slow_mail_without_parsing_it_again(
    store: SqliteStore, small_budget: float, db: Path
) -> None:
    engine = CaseEngine(store, EngineSettings("Default", extract_attachments=True))
    key, raw = MailKey("Default", "IMAP/New", "1", "7"), slow_mail()
    with pytest.raises(QuarantineNow) as caught:
        await engine.ingest(key, raw, engine.prepare(raw))
    started = time.monotonic()
    await engine.quarantine(key, raw, str(caught.value), 1)
    assert time.monotonic() - started < small_budget  # no second budget spent on it
    rows = db_rows(db, "SELECT reason, item FROM quarantine")
    assert len(rows) == 1 and rows[0][0].startswith("parse-timeout") and rows[0][1] == "7"
    assert db_rows(db, "SELECT count(*) FROM cases") == [(0,)]


def _worker_pids(pool: ParsePool) -> set[int]:
    return {w.process.pid for w in pool._workers if w.alive()}


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ", 1)[1][:1] not in ("Z", "X")
    except FileNotFoundError:
        return False


async def test_a_worker_running_other_code_is_refused_not_misread(
    pool: ParsePool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The files were upgraded under a running daemon: new workers would speak another
    format. They are refused at start (the mail is not blamed for a hang or garbage)."""
    monkeypatch.setattr(parse_worker, "HELLO", b"engage-parse " + b"0" * 16)
    with pytest.raises(parse_pool.WorkerDied, match="other code"):
        await pool.prepare(make_mail(1), False)
    assert not _worker_pids(pool)
