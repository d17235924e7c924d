"""The pool's size (Process/Workers), its in-process mode (0), and what a worker hands
back besides the parse: the hash, the automatic-mail verdict and the new text."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable, Iterator

import pytest

from engage_listener.mail import parse_pool, parse_shared
from engage_listener.mail.parse_pool import ParsePool, Prepared
from engage_listener.mail.reply import new_text
from tests.support.helpers import make_mail
from tests.support.hostile_mail import slow_mail

REPLY = (
    b"From: Ana <ana@example.com>\r\nTo: soporte@example.org\r\nSubject: RE: pedido\r\n"
    b"Message-ID: <r1@example.com>\r\nAuto-Submitted: auto-replied\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n\r\n"
    b"Sigue sin llegar.\r\n\r\nEl lun, 1 dic 2026, Soporte escribi\xc3\xb3:\r\n> Enviado ayer.\r\n"
)


@pytest.fixture
def restore_shared() -> Iterator[None]:
    """The process's pool as the other tests expect it, afterwards."""
    yield
    parse_shared.configure(parse_shared.WORKERS)
    parse_shared.close_shared()


async def prepare_all(pool: ParsePool, raws: list[bytes]) -> list[Prepared]:
    return list(await asyncio.gather(*(pool.submit(raw, True) for raw in raws)))


@pytest.mark.parametrize("workers", [0, 1, 2])
def test_a_worker_hands_back_hash_verdict_and_new_text(workers: int) -> None:
    pool = ParsePool(workers)
    try:
        (ready,) = asyncio.run(prepare_all(pool, [REPLY]))
        assert ready.sha256 == hashlib.sha256(REPLY).hexdigest()
        assert ready.automatic is not None and "auto-replied" in ready.automatic.lower()
        assert ready.new_text == "Sigue sin llegar." == new_text(ready.mail.text)
        deadline = time.monotonic() + 60  # each slot's thread starts its own process
        while len(pool._workers) < min(workers, 1) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(pool._workers) == min(workers, 1)  # one mail needs one; 0: none started
    finally:
        pool.close()


def test_in_process_keeps_order_and_parses_big_mails_off_the_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(parse_pool, "INLINE_BYTES", 4096)
    raws = [make_mail(n, body="x" * (n * 1500)) for n in range(8)]
    pool = ParsePool(0)
    ready = asyncio.run(prepare_all(pool, raws))
    assert [r.sha256 for r in ready] == [hashlib.sha256(raw).hexdigest() for raw in raws]
    assert pool._workers == set()


def test_every_listener_shares_one_pool_of_the_configured_size(restore_shared: None) -> None:
    parse_shared.close_shared()
    parse_shared.configure(3)
    first = parse_shared.shared()
    assert first.workers == 3 and parse_shared.shared() is first  # every caller: the same
    parse_shared.configure(3)
    assert parse_shared.shared() is first  # the same size: kept
    parse_shared.configure(1)
    second = parse_shared.shared()
    assert second is not first and second.workers == 1 and first._closed


def idle_cores(cores: float) -> Callable[[], float]:
    """A stand-in for /proc/stat: the CPUs idle `cores` cores' worth all along."""
    started = time.monotonic()
    return lambda: (time.monotonic() - started) * cores


async def take_in_order(pool: ParsePool, raws: list[bytes], work: float) -> list[Prepared]:
    """As a batch does: every mail sent ahead at once, then taken in order, `work` seconds
    spent on each (the store, routing) before the next."""
    futures = [pool.submit(raw, True) for raw in raws]
    ready = []
    for future in futures:
        ready.append(await pool.take(future))
        await asyncio.sleep(work)
    return ready


def test_a_pool_that_keeps_up_with_the_batch_keeps_one_worker(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The batch is the slower (each mail's store work takes longer than its parse): after
    the first mail, every answer is there before it is taken, so no worker more starts."""
    monkeypatch.setattr(parse_pool, "GROW_SECONDS", 0.2)
    monkeypatch.setattr(parse_pool, "cpu_idle", idle_cores(8))
    monkeypatch.setattr(parse_pool, "DEPTH", 1)  # mails stay queued: the pool could grow
    pool = ParsePool(3)
    raws = [make_mail(n) for n in range(150)]
    try:
        asyncio.run(pool.prepare(raws[0], True))  # the worker started
        ready = asyncio.run(take_in_order(pool, raws, 0.01))
        assert len(ready) == 150
        assert len(pool._slots) == 1 and len(pool._workers) == 1
    finally:
        pool.close()


def test_a_batch_that_waits_for_its_parses_brings_more_workers_up_to_workers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Mails that each take a worker ~0.1 s and a batch with nothing else to do: it waits
    for one mail after another, so workers start, but never more than Workers."""
    monkeypatch.setattr(parse_pool, "GROW_SECONDS", 0.2)
    monkeypatch.setattr(parse_pool, "cpu_idle", idle_cores(8))
    pool = ParsePool(2)
    raws = [slow_mail(1, subject=f"slow {n}") for n in range(16)]
    try:
        ready = asyncio.run(take_in_order(pool, raws, 0.0))
        assert [r.sha256 for r in ready] == [hashlib.sha256(raw).hexdigest() for raw in raws]
        assert len(pool._slots) == 2
    finally:
        pool.close()


def test_no_worker_more_while_no_core_is_idle(monkeypatch: pytest.MonkeyPatch) -> None:
    """The same waiting batch on a machine whose cores are all busy (with the event loop,
    the mail server): a worker more would only take CPU from them, so none starts."""
    monkeypatch.setattr(parse_pool, "GROW_SECONDS", 0.2)
    monkeypatch.setattr(parse_pool, "cpu_idle", idle_cores(0.5))
    pool = ParsePool(2)
    raws = [slow_mail(1, subject=f"slow {n}") for n in range(16)]
    try:
        asyncio.run(take_in_order(pool, raws, 0.0))
        assert len(pool._slots) == 1
    finally:
        pool.close()
