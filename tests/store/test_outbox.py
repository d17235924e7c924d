"""The outbox: acknowledgements queued with their case, delivered and changed by state."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable

from engage_listener.store.interface import NewAck, NewCase, NewMessage, Store

MessageFactory = Callable[..., NewMessage]  # the `message` fixture
HOUR_AGO = (dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)).isoformat(timespec="seconds")


async def _queue(store: Store, message: MessageFactory, recipient: str, **how: object) -> int:
    async with store.transaction() as tx:
        case = await tx.create_case(NewCase("L", None, recipient, "", "S", "s"))
        row = await tx.add_message(case.id, message())
        ack = NewAck("L", case.id, row, recipient, "Re: S", "<ack@example.com>", b"MIME")
        return await tx.add_outbox(ack, **how)  # type: ignore[arg-type]


async def test_pending_rows_are_due_until_sent(store: Store, message: MessageFactory) -> None:
    row_id = await _queue(store, message, "Cliente+x@Example.com")
    [due] = await store.due_outbox(time.time(), 10)
    assert (due.id, due.listener, due.recipient, due.attempts, due.mime) == (
        row_id,
        "L",
        "cliente+x@example.com",
        0,
        b"MIME",
    )
    await store.update_outbox(row_id, "pending", attempts=1, next_attempt_at=time.time() + 60)
    assert await store.due_outbox(time.time(), 10) == []
    await store.update_outbox(row_id, "sending")
    assert await store.outbox_in_state("sending") == [row_id]
    await store.update_outbox(row_id, "sent", smtp_reply="250 ok", sent_at="2024-01-01T00:00:00")
    assert await store.outbox_in_state("sending") == []
    assert await store.list_acks() == []  # by default every row not sent
    [sent] = await store.list_acks(["sent"])
    assert (sent.state, sent.attempts, sent.smtp_reply) == ("sent", 1, "250 ok")


async def test_rate_limit_counts(store: Store, message: MessageFactory) -> None:
    await _queue(store, message, "cliente+1@example.com")
    await _queue(store, message, "cliente+2@example.com")
    failed = await _queue(store, message, "cliente@example.com")
    await store.update_outbox(failed, "failed", last_error="550 no")
    await _queue(store, message, "cliente@example.com", state="suppressed", last_error="limit")
    async with store.transaction() as tx:
        assert await tx.recent_acks("cliente@example.com", HOUR_AGO) == 2  # +tags together
        assert await tx.listener_acks("L", HOUR_AGO) == 3  # failed counts, suppressed not
        assert await tx.listener_acks("M", HOUR_AGO) == 0


async def test_operator_changes_only_allowed_states(store: Store, message: MessageFactory) -> None:
    row_id = await _queue(store, message, "cliente@example.com")
    await store.update_outbox(row_id, "uncertain", last_error="interrupted")
    async with store.transaction() as tx:
        row = await tx.get_ack(row_id)
        assert row is not None and (row.state, row.last_error) == ("uncertain", "interrupted")
        assert not await tx.change_ack(row_id, "closed", "closed", ["failed"])
        assert await tx.change_ack(row_id, "pending", "again", ["uncertain"], next_attempt_at=0)
        assert await tx.get_ack(row_id + 1) is None
    [again] = await store.list_acks(["pending"])
    assert (again.state, again.last_error) == ("pending", "again")
    assert [r.id for r in await store.due_outbox(time.time(), 10)] == [row_id]


async def test_only_rows_no_live_sender_is_sending_are_stranded(
    store: Store, message: MessageFactory
) -> None:
    left, mine = (
        await _queue(store, message, "a@example.com"),
        await _queue(store, message, "b@example.com"),
    )
    async with store.transaction() as tx:  # as a sender that ended would have left it
        assert await tx.change_ack(left, "sending", "", ["pending"])
    assert [row.id for row in await store.due_outbox(time.time(), 10)] == [mine]
    assert await store.update_outbox(mine, "sending")  # this process is sending it now
    assert await store.stranded_outbox() == [left]
    await store.update_outbox(mine, "sent", smtp_reply="250 ok")
    async with store.transaction() as tx:
        assert await tx.change_ack(left, "uncertain", "interrupted", ["sending"])
    assert await store.stranded_outbox() == []
