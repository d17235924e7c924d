"""Case events POSTed to a real receiver on loopback: signed, retried, in order, bounded."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from engage_listener.ops.webhooks import change_events
from engage_listener.store.sqlite.store import SqliteStore
from tests.support.engine import key
from tests.support.helpers import make_mail
from tests.support.servers.webhook_server import Reply, WebhookReceiver
from tests.support.webhooks import SECRET, endpoint, engine, sender

Start = Callable[..., WebhookReceiver]


class Wall:
    """The sender's wall clock, moved by the test."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


async def _rows(store: SqliteStore) -> list[Any]:
    return await store.list_webhook_events(("pending", "delivered", "failed", "closed"))


async def test_events_are_posted_signed_over_verified_tls_in_order(
    store: SqliteStore, webhook_receiver: Start
) -> None:
    receiver = webhook_receiver(SECRET, tls=True)
    eng = engine(store)
    opened = await eng.ingest(key(), make_mail(1, subject="Factura duplicada"))
    joined = await eng.ingest(key(), make_mail(2, subject="RE: Factura duplicada"))
    assert joined.case_id == opened.case_id and not joined.new_case

    out = sender(store, {"L": endpoint(receiver)})
    assert await out.deliver_due() == 2
    await out.close()

    seen = receiver.requests()
    assert [r.event for r in seen] == ["case-opened", "message-added"]
    assert all(r.signature_ok for r in seen)
    assert [r.body["id"] for r in seen] == [r.event_id for r in seen]
    assert len({r.event_id for r in seen}) == 2
    first = seen[0].body
    assert first["case"]["number"] == opened.case_number and first["case"]["status"] == "open"
    assert first["message"]["from"] == "cliente@example.com"
    assert first["message"]["subject"] == "Factura duplicada"
    assert seen[1].body["message"]["subject"] == "RE: Factura duplicada"
    rows = await _rows(store)
    done = ("delivered", 1, "HTTP 200 OK")
    assert [(r.state, r.attempts, r.response) for r in rows] == [done] * 2


async def test_tls_is_verified_a_receiver_with_an_unknown_ca_gets_nothing(
    store: SqliteStore, webhook_receiver: Start
) -> None:
    receiver = webhook_receiver(SECRET, tls=True)
    await engine(store).ingest(key(), make_mail(1))
    out = sender(store, {"L": endpoint(receiver, ca_file=None)})
    assert await out.deliver_due() == 0
    await out.close()
    assert receiver.requests() == []
    (row,) = await _rows(store)
    assert row.state == "pending" and row.attempts == 1
    assert "TLS failed" in (row.last_error or "") and "certificate" in (row.last_error or "")


async def test_a_wrong_signature_is_refused_and_the_event_fails_without_showing_the_secret(
    store: SqliteStore, webhook_receiver: Start
) -> None:
    receiver = webhook_receiver(SECRET)
    await engine(store).ingest(key(), make_mail(1))
    wrong = "not-the-crm-secret-7d2"
    out = sender(store, {"L": endpoint(receiver, secret=wrong)})
    assert await out.deliver_due() == 0
    await out.close()
    (seen,) = receiver.requests()
    assert not seen.signature_ok and seen.status == 401
    (row,) = await _rows(store)
    assert row.state == "failed" and row.attempts == 1
    assert (row.last_error or "").startswith("HTTP 401")
    assert wrong not in repr(row) and SECRET not in repr(row)


async def test_5xx_and_429_are_retried_with_backoff_and_retry_after_same_event_id(
    store: SqliteStore, webhook_receiver: Start
) -> None:
    receiver = webhook_receiver(SECRET)
    receiver.script(Reply(503), Reply(429, headers={"Retry-After": "7"}))
    await engine(store).ingest(key(), make_mail(1))
    wall = Wall()
    out = sender(store, {"L": endpoint(receiver)}, wall=wall, retry_base=10.0)

    assert await out.deliver_due() == 0  # 503: back off 10 s
    (row,) = await _rows(store)
    assert (row.state, row.attempts) == ("pending", 1)
    assert row.last_error == "HTTP 503 Service Unavailable"
    wall.now += 9.5
    assert await out.deliver_due() == 0 and len(receiver.requests()) == 1  # not due yet
    wall.now += 0.5
    assert await out.deliver_due() == 0  # 429 with Retry-After 7
    assert len(receiver.requests()) == 2
    assert await store.next_webhook_attempt() == wall.now + 7
    wall.now += 6.9
    assert await out.deliver_due() == 0 and len(receiver.requests()) == 2
    wall.now += 0.1
    assert await out.deliver_due() == 1
    await out.close()

    seen = receiver.requests()
    assert [r.status for r in seen] == [503, 429, 200]
    assert len({r.event_id for r in seen}) == 1 and all(r.signature_ok for r in seen)
    (row,) = await _rows(store)
    assert (row.state, row.attempts) == ("delivered", 3)


async def test_past_max_attempts_the_event_fails(
    store: SqliteStore, webhook_receiver: Start
) -> None:
    receiver = webhook_receiver(SECRET)
    receiver.script(Reply(500), Reply(502))
    await engine(store).ingest(key(), make_mail(1))
    wall = Wall()
    out = sender(store, {"L": endpoint(receiver, max_attempts=2)}, wall=wall, retry_base=1.0)
    await out.deliver_due()
    wall.now += 1
    await out.deliver_due()
    wall.now += 3600
    assert await out.deliver_due() == 0
    await out.close()
    assert [r.status for r in receiver.requests()] == [500, 502]
    (row,) = await _rows(store)
    assert row.state == "failed" and row.attempts == 2
    assert (row.last_error or "").startswith("gave up after 2 attempt(s): HTTP 502")


async def test_no_answer_in_time_is_retried_a_stalled_body_after_200_is_delivered(
    store: SqliteStore, webhook_receiver: Start
) -> None:
    receiver = webhook_receiver(SECRET)
    receiver.script(Reply(delay=5), Reply(200, stall=True))
    await engine(store).ingest(key(), make_mail(1))
    wall = Wall()
    out = sender(store, {"L": endpoint(receiver, timeout=0.5)}, wall=wall, retry_base=1.0)
    started = time.monotonic()
    assert await out.deliver_due() == 0
    (row,) = await _rows(store)
    assert row.last_error == "no answer within 0.5 s"
    wall.now += 1
    assert await out.deliver_due() == 1  # the status came; the body never finishes
    assert time.monotonic() - started < 4
    (row,) = await _rows(store)
    assert row.state == "delivered" and row.attempts == 2
    await out.close()


async def test_oversize_answers_are_not_read_whole(
    store: SqliteStore, webhook_receiver: Start
) -> None:
    receiver = webhook_receiver(SECRET)
    huge = 512 * 1024 * 1024  # far more than anyone should buffer
    receiver.script(Reply(500, body_size=huge), Reply(200, body_size=huge))
    await engine(store).ingest(key(), make_mail(1))
    wall = Wall()
    out = sender(store, {"L": endpoint(receiver)}, wall=wall, retry_base=1.0)
    started = time.monotonic()
    await out.deliver_due()
    (row,) = await _rows(store)
    assert row.state == "pending" and (row.last_error or "").startswith("HTTP 500")
    assert len(row.last_error or "") < 400
    wall.now += 1
    assert await out.deliver_due() == 1
    assert time.monotonic() - started < 10
    await out.close()


async def test_a_failed_event_holds_its_case_and_no_other(
    store: SqliteStore, webhook_receiver: Start
) -> None:
    receiver = webhook_receiver(SECRET)
    receiver.script(Reply(422))
    eng = engine(store)
    a = await eng.ingest(key(), make_mail(1, subject="Caso A"))
    await eng.ingest(key(), make_mail(2, subject="RE: Caso A"))
    b = await eng.ingest(key(), make_mail(3, sender="otro@example.com", subject="Caso B"))
    out = sender(store, {"L": endpoint(receiver)})
    assert await out.deliver_due() == 1  # A's opening refused (422), B's opening delivered
    assert [(r.status, r.body["case"]["id"]) for r in receiver.requests()] == [
        (422, a.case_id),
        (200, b.case_id),
    ]
    assert await out.deliver_due() == 0  # A's message-added waits behind its failed opening

    failed = [r for r in await _rows(store) if r.state == "failed"]
    (change,) = await change_events(store, [failed[0].id], resend=True)
    assert change.done
    assert await out.deliver_due() == 2  # the same opening again, then the held event
    await out.close()
    events = [(r.event, r.body["case"]["id"]) for r in receiver.accepted()]
    assert events == [
        ("case-opened", b.case_id),
        ("case-opened", a.case_id),
        ("message-added", a.case_id),
    ]
    assert receiver.requests()[0].event_id == receiver.requests()[2].event_id


async def test_a_receiver_down_for_a_while_holds_only_its_own_events(
    store: SqliteStore, webhook_receiver: Start
) -> None:
    down, up = webhook_receiver(SECRET), webhook_receiver(SECRET)
    down.stop()
    eng_down, eng_up = engine(store), engine(store, listener="M")
    for n in range(3):
        await eng_down.ingest(key(), make_mail(n, subject=f"Abajo {n}"))
        await eng_up.ingest(key(), make_mail(10 + n, subject=f"Arriba {n}"))
    wall = Wall()
    out = sender(store, {"L": endpoint(down), "M": endpoint(up)}, wall=wall, retry_base=30.0)
    assert await out.deliver_due() == 3
    assert len(up.accepted()) == 3
    rows = {r.id: r for r in await _rows(store) if r.listener == "L"}
    assert sorted(r.attempts for r in rows.values()) == [0, 0, 1]  # one try, the rest held
    assert all(r.state == "pending" for r in rows.values())
    assert await store.next_webhook_attempt() == wall.now + 30

    down.start()  # back, on the same port
    wall.now += 30
    assert await out.deliver_due() == 3
    assert sorted(r.body["message"]["subject"] for r in down.accepted()) == [
        "Abajo 0", "Abajo 1", "Abajo 2",
    ]  # fmt: skip
    assert len(set(down.accepted_ids())) == 3
    await out.close()
