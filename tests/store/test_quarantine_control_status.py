"""Quarantine, operator control and status: what a second process reads and writes."""

from __future__ import annotations

from collections.abc import Callable

from engage_listener.store.interface import Heartbeat, MailKey, NewCase, NewMessage, Store

MessageFactory = Callable[..., NewMessage]  # the `message` fixture
KEY = MailKey("P", "", "0", "uidl-9")


async def test_quarantine_keeps_the_mail_and_its_key(store: Store, message: MessageFactory) -> None:
    mail = message("P")
    async with store.transaction() as tx:
        entry = await tx.add_quarantine(KEY, b"RAW", mail, "parse-timeout: slow", 3)
    assert await store.known_states("P", "", "0", ["uidl-9"]) == {"uidl-9": "quarantined"}
    [held] = await store.list_quarantine()
    assert (held.id, held.listener, held.mailbox, held.item) == (entry, "P", "", "uidl-9")
    assert (held.reason, held.attempts, held.state, held.size) == (
        "parse-timeout: slow",
        3,
        "held",
        3,
    )
    found = await store.get_quarantine(entry)
    assert found is not None and found[1] == b"RAW"
    assert await store.get_quarantine(entry + 1) is None
    [history] = await store.ledger_history("P", "", "uidl-9")
    assert (history.state, history.size) == ("quarantined", 3)
    async with store.transaction() as tx:
        case = await tx.create_case(NewCase("P", None, "a@example.com", "", "S", "s"))
    await store.mark_replayed(entry, case.id)
    assert await store.list_quarantine() == []
    [replayed] = await store.list_quarantine(include_replayed=True)
    assert (replayed.state, replayed.case_id) == ("replayed", case.id)


async def test_operator_control(store: Store) -> None:
    assert await store.read_control("L") is None
    await store.set_control("L", "paused_until", "2030-01-01T00:00:00+01:00")
    await store.set_control("L", "reset_from", "2024-01-01T00:00:00+01:00")
    row = await store.read_control("L")
    assert row is not None and row.paused_until == "2030-01-01T00:00:00+01:00"
    await store.clear_reset("L", "2023-12-31T00:00:00+01:00")  # a newer request stays
    row = await store.read_control("L")
    assert row is not None and row.reset_from == "2024-01-01T00:00:00+01:00"
    await store.clear_reset("L", "2024-01-01T00:00:00+01:00")
    await store.set_control("L", "paused_until", None)
    row = await store.read_control("L")
    assert row is not None and (row.paused_until, row.reset_from) == (None, None)
    assert await store.paused_until() == {"L": None}


def _beat(listener: str, state: str = "idle") -> Heartbeat:
    return Heartbeat(listener, state, 42, None, "boom", 3, None, None, "2024-01-01T00:00:00+00:00")


async def test_heartbeats_are_replaced_by_the_running_workers(store: Store) -> None:
    await store.write_heartbeats([_beat("B"), _beat("A")])
    assert await store.heartbeats() == [_beat("A"), _beat("B")]  # by listener
    await store.write_heartbeats([_beat("B", "processing")])
    assert await store.heartbeats() == [_beat("B", "processing")]
    await store.write_heartbeats([])
    assert await store.heartbeats() == []


async def test_listener_counts(store: Store, message: MessageFactory) -> None:
    for n in range(3):
        mail = message("A")
        async with store.transaction() as tx:
            row = await tx.add_message(None, mail)
            await tx.add_ledger(MailKey("A", "INBOX", "1", str(n)), row, mail)
    async with store.transaction() as tx:
        await tx.add_quarantine(MailKey("A", "INBOX", "1", "9"), b"x", message("A"), "bad", 1)
    counts = await store.listener_counts("A", "2000-01-01T00:00:00+00:00")
    assert (counts.processed_today, counts.processed_total) == (3, 3)
    assert (counts.quarantined, counts.pending_acks) == (1, 0)
    later = await store.listener_counts("A", "2999-01-01T00:00:00+00:00")
    assert (later.processed_today, later.processed_total) == (0, 3)
