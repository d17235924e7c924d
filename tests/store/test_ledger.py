"""The exactly-once ledger: a mail key is taken once, and only what committed counts."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from engage_listener.errors import StoreError
from engage_listener.store.interface import (
    CaseRef,
    MailKey,
    NewCase,
    NewMessage,
    Store,
    SubjectKey,
)

MessageFactory = Callable[..., NewMessage]  # the `message` fixture

KEY = MailKey("L", "INBOX", "7", "1")


async def _commit(store: Store, key: MailKey, message: MessageFactory) -> int:
    async with store.transaction() as tx:
        row = await tx.add_message(None, message(key.listener))
        await tx.add_ledger(key, row, message(key.listener))
    return row


async def test_a_committed_key_is_known_in_its_epoch_only(
    store: Store, message: MessageFactory
) -> None:
    await _commit(store, KEY, message)
    assert await store.known_states("L", "INBOX", "7", ["1", "2"]) == {"1": "committed"}
    assert await store.known_states("L", "INBOX", "8", ["1"]) == {}
    assert await store.known_states("L", "Other", "7", ["1"]) == {}
    assert await store.known_states("M", "INBOX", "7", ["1"]) == {}


async def test_a_key_is_taken_once(store: Store, message: MessageFactory) -> None:
    await _commit(store, KEY, message)
    with pytest.raises(StoreError):
        await _commit(store, KEY, message)
    assert await store.known_states("L", "INBOX", "7", ["1"]) == {"1": "committed"}


async def test_nothing_of_a_failed_transaction_stays(store: Store, message: MessageFactory) -> None:
    mail = message()
    with pytest.raises(RuntimeError):
        async with store.transaction() as tx:
            case = await tx.create_case(NewCase("L", None, "a@example.com", "", "S", "s"))
            row = await tx.add_message(case.id, mail)
            await tx.add_ledger(KEY, row, mail)
            raise RuntimeError("the routing hook failed")
    assert await store.known_states("L", "INBOX", "7", ["1"]) == {}
    assert await store.list_cases() == []
    async with store.transaction() as tx:
        assert await tx.find_duplicate("L", mail.sha256, mail.message_id) is None


async def test_a_group_commits_together_or_not_at_all(
    store: Store, message: MessageFactory
) -> None:
    keys = [MailKey("L", "INBOX", "7", str(n)) for n in range(3)]
    async with store.group():
        for key in keys[:2]:
            await _commit(store, key, message)
    assert set(await store.known_states("L", "INBOX", "7", ["0", "1", "2"])) == {"0", "1"}
    with pytest.raises(RuntimeError):
        async with store.group():
            await _commit(store, keys[2], message)
            raise RuntimeError("crash before the group's commit")
    assert set(await store.known_states("L", "INBOX", "7", ["0", "1", "2"])) == {"0", "1"}


async def test_one_mail_of_a_group_rolls_back_alone(store: Store, message: MessageFactory) -> None:
    async with store.group():
        await _commit(store, MailKey("L", "INBOX", "7", "1"), message)
        with pytest.raises(RuntimeError):
            async with store.transaction() as tx:
                await tx.add_message(None, message())
                raise RuntimeError("one bad mail")
        await _commit(store, MailKey("L", "INBOX", "7", "3"), message)
    assert set(await store.known_states("L", "INBOX", "7", ["1", "3"])) == {"1", "3"}


async def test_settled_mail_changes_state(store: Store, message: MessageFactory) -> None:
    other = MailKey("L", "INBOX", "7", "2")
    await _commit(store, KEY, message)
    await _commit(store, other, message)
    await store.mark_done([KEY], "moved")
    await store.mark_done([other], "deleted")
    assert await store.known_states("L", "INBOX", "7", ["1", "2"]) == {
        "1": "moved",
        "2": "deleted",
    }


async def test_history_of_an_item_in_every_epoch(store: Store, message: MessageFactory) -> None:
    first, later = message(raw=b"one\r\n"), message(raw=b"second mail\r\n")
    for epoch, mail in (("0", first), ("1", later)):
        async with store.transaction() as tx:
            row = await tx.add_message(None, mail)
            await tx.add_ledger(MailKey("P", "", epoch, "uidl-1"), row, mail)
    history = await store.ledger_history("P", "", "uidl-1")
    assert [(h.epoch, h.state, h.sha256, h.size) for h in history] == [
        ("0", "committed", first.sha256, len(first.raw)),
        ("1", "committed", later.sha256, len(later.raw)),
    ]
    assert await store.ledger_history("P", "", "uidl-2") == []


async def test_failures_are_counted_until_the_mail_is_taken(
    store: Store, message: MessageFactory
) -> None:
    assert await store.record_failure(KEY, "boom") == 1
    assert await store.record_failure(KEY, "boom again") == 2
    assert await store.record_failure(MailKey("L", "INBOX", "8", "1"), "other epoch") == 1
    await _commit(store, KEY, message)
    assert await store.record_failure(KEY, "seen again") == 1  # the count started over


async def test_duplicates_and_known_message_ids(store: Store, message: MessageFactory) -> None:
    mail = message(message_id="<same@example.com>")
    async with store.transaction() as tx:
        case = await tx.create_case(NewCase("L", None, "a@example.com", "", "S", "s"))
        row = await tx.add_message(case.id, mail)
        await tx.add_ledger(KEY, row, mail)
    async with store.transaction() as tx:
        assert await tx.find_duplicate("L", mail.sha256, mail.message_id) == row
        assert await tx.find_duplicate("M", mail.sha256, mail.message_id) is None
        assert await tx.find_duplicate("L", mail.sha256, "<other@example.com>") is None
        assert await tx.case_of_message(row) == case
    ids = ["<same@example.com>", "<unknown@example.com>"]
    assert await store.known_message_ids("L", ids) == {"<same@example.com>"}
    assert await store.known_message_ids("M", ids) == set()


async def test_an_arrival_is_looked_up_at_once(store: Store, message: MessageFactory) -> None:
    """`find_arrival`: `find_duplicate` and `find_customer` in one look-up, each as alone."""
    mail, other = message(message_id="<same@example.com>"), message()
    async with store.transaction() as tx:
        ana = await tx.create_customer("Ana", "Ana@Example.com", "auto")
        await tx.add_customer_address(ana.id, "ana@example.org")
        ana = await tx.get_customer(ana.id)
        row = await tx.add_message(None, mail)
        await tx.add_ledger(KEY, row, mail)
    async with store.transaction() as tx:
        seen = [
            await tx.find_arrival("L", mail.sha256, mail.message_id, "ANA@example.com"),
            await tx.find_arrival("L", mail.sha256, "<other@example.com>", "ana@example.org"),
            await tx.find_arrival("M", mail.sha256, mail.message_id, "nobody@example.com"),
            await tx.find_arrival("L", other.sha256, other.message_id, ""),
        ]
    assert [(s.duplicate, s.customer) for s in seen] == [
        (row, ana), (None, ana), (None, None), (None, None),
    ]  # fmt: skip


async def test_an_arrival_with_a_subject_finds_the_customers_cases_by_it(
    store: Store, message: MessageFactory
) -> None:
    """With a `SubjectKey`, `find_arrival` also says what `cases_by_subject` says of the
    customer it found: (None, None) without one or for an empty subject, None unasked."""
    mail = message()
    async with store.transaction() as tx:
        ana = await tx.create_customer("Ana", "ana@example.com", "auto")
        closed = await tx.create_case(_case(ana.id, "Factura"))
        await tx.close_case(closed.id, None, "2026-01-10T09:00:00+00:00")
        opened = await tx.create_case(_case(ana.id, "Factura"))
    asked = [
        ("ANA@example.com", SubjectKey("ventas", "factura")),
        ("ana@example.com", SubjectKey(None, "factura")),
        ("ana@example.com", SubjectKey("ventas", "")),
        ("nobody@example.com", SubjectKey("ventas", "factura")),
        ("", SubjectKey("ventas", "factura")),
    ]
    async with store.transaction() as tx:
        seen = [await tx.find_arrival("L", mail.sha256, None, a, k) for a, k in asked]
        alone = await tx.cases_by_subject(ana.id, "ventas", "factura")
        unasked = await tx.find_arrival("L", mail.sha256, None, "ana@example.com")
    assert seen[0].by_subject == alone and alone[0] == opened
    assert alone[1] is not None and alone[1].ref == closed
    assert [s.by_subject for s in seen[1:]] == [(None, None)] * 4
    assert unasked.by_subject is None and unasked.customer == ana


async def test_the_rows_an_arrival_makes_room_for_are_stored(
    store: Store, message: MessageFactory
) -> None:
    """The customer and message created after `find_arrival` (the PostgreSQL store
    queues them with the ids the arrival took) are there, once, as any others."""
    mail = message(sender="nueva@example.com")
    async with store.transaction() as tx:
        seen = await tx.find_arrival("L", mail.sha256, mail.message_id, "Nueva@example.com")
        assert seen.customer is None
        customer = await tx.create_customer("Nueva", "Nueva@example.com", "auto")
        case = await tx.create_case(_case(customer.id, "Hola"))
        row = await tx.add_message(case.id, mail)
        await tx.add_ledger(KEY, row, mail)
    async with store.transaction() as tx:
        again = await tx.find_arrival("L", mail.sha256, mail.message_id, "nueva@example.com")
        other = await tx.create_customer("Otra", "otra@example.com", "auto")
    assert again.duplicate == row and again.customer == customer
    assert await _case_of(store, row) == case
    assert len({customer.id, other.id}) == 2


async def _case_of(store: Store, row: int) -> CaseRef | None:
    async with store.transaction() as tx:
        return await tx.case_of_message(row)


def _case(customer_id: int, subject: str) -> NewCase:
    return NewCase(
        "L", "ventas", "ana@example.com", "Ana", subject, subject.lower(), customer_id=customer_id
    )
