"""The webhook outbox: events queued with their case, handed out in order per case."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

from engage_listener.config.webhook import WebhookEventName
from engage_listener.store.interface import NewCase, NewMessage, NewWebhookEvent, Store

MessageFactory = Callable[..., NewMessage]  # the `message` fixture


async def _case(store: Store, listener: str = "L") -> int:
    async with store.transaction() as tx:
        return (await tx.create_case(NewCase(listener, None, "c@example.com", "", "S", "s"))).id


async def _queue(
    store: Store, case_id: int, event: WebhookEventName = "case-opened", listener: str = "L"
) -> int:
    async with store.transaction() as tx:
        new = NewWebhookEvent(listener, case_id, None, event, str(uuid.uuid4()), b'{"a":1}')
        return await tx.add_webhook_event(new)


async def test_events_are_due_in_order_per_case(store: Store) -> None:
    a, b = await _case(store), await _case(store)
    a1, a2 = await _queue(store, a), await _queue(store, a, "message-added")
    b1 = await _queue(store, b)
    now = time.time()
    due = await store.due_webhook_events(now, 10)
    assert [(d.id, d.case_id, d.event, d.attempts, d.body) for d in due] == [
        (a1, a, "case-opened", 0, b'{"a":1}'),
        (b1, b, "case-opened", 0, b'{"a":1}'),
    ]  # a2 waits behind a1
    await store.update_webhook_event(a1, "pending", attempts=1, next_attempt_at=now + 60)
    assert [d.id for d in await store.due_webhook_events(now, 10)] == [b1]
    soonest = await store.next_webhook_attempt()  # b1's: due already; a2 is behind a1
    assert soonest is not None and soonest <= now
    await store.update_webhook_event(a1, "failed", attempts=2, last_error="HTTP 400")
    await store.update_webhook_event(b1, "delivered", attempts=1, response="HTTP 200 OK",
                                     delivered_at="2026-12-03T16:00:00+00:00")  # fmt: skip
    assert await store.due_webhook_events(now, 10) == []  # a2 is held by the failed a1
    assert await store.next_webhook_attempt() is None
    assert [r.id for r in await store.list_webhook_events()] == [a1, a2]  # not delivered
    [done] = await store.list_webhook_events(["delivered"])
    assert (done.id, done.response, done.attempts) == (b1, "HTTP 200 OK", 1)

    async with store.transaction() as tx:
        assert not await tx.change_webhook_event(a2, "closed", "x", ["failed"])  # a2 is pending
        again = await tx.change_webhook_event(
            a1, "pending", "again", ["failed"], next_attempt_at=now
        )
        assert again
        row = await tx.get_webhook_event(a1)
    assert row is not None and (row.state, row.attempts, row.last_error) == ("pending", 0, "again")
    assert [d.id for d in await store.due_webhook_events(now, 10)] == [a1]


async def test_postponing_a_receivers_events_leaves_the_others(store: Store) -> None:
    first, second = await _case(store, "L"), await _case(store, "M")
    mine = await _queue(store, first, listener="L")
    other = await _queue(store, second, listener="M")
    now = time.time()
    await store.postpone_webhook_events(["L"], now + 30)
    assert [d.id for d in await store.due_webhook_events(now, 10)] == [other]
    assert [d.id for d in await store.due_webhook_events(now + 30, 10)] == [mine, other]
    [row] = [r for r in await store.list_webhook_events() if r.id == mine]
    assert row.next_attempt_at is not None and row.attempts == 0
