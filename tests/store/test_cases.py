"""Customers and cases: creating, finding, joining, approving, listing."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from engage_listener.store.interface import (
    MailKey,
    NewAttachment,
    NewCase,
    NewMessage,
    Store,
)

MessageFactory = Callable[..., NewMessage]  # the `message` fixture


def _case(customer_id: int | None = None, subject: str = "Factura") -> NewCase:
    return NewCase(
        listener="L",
        process="ventas",
        sender="cliente@example.com",
        sender_name="Cliente",
        subject=subject,
        normalized_subject=subject.lower(),
        customer_id=customer_id,
    )


async def test_customers_are_found_by_any_case_of_their_address(store: Store) -> None:
    async with store.transaction() as tx:
        made = await tx.create_customer("Cliente", "Cliente@Example.com", "auto")
        assert made.addresses == ("cliente@example.com",)
        assert await tx.find_customer("CLIENTE@example.com") == made
        assert await tx.get_customer(made.id) == made
        assert await tx.find_customer("otro@example.com") is None
    assert await store.list_customers() == [made]


async def test_a_new_case_is_open_and_numbered(store: Store, message: MessageFactory) -> None:
    async with store.transaction() as tx:
        customer = await tx.create_customer("Cliente", "cliente@example.com", "auto")
        case = await tx.create_case(_case(customer.id))
        row = await tx.add_message(case.id, message())
        await tx.add_attachment(row, NewAttachment("a.pdf", "application/pdf", b"%PDF"))
        info = await tx.case_info(case.id)
    assert case.case_number.isdigit() and int(case.case_number) == case.id
    assert (info.status, info.process, info.customer_id) == ("open", "ventas", customer.id)
    [summary] = await store.list_cases()
    assert (summary.id, summary.status, summary.messages, summary.attachments) == (
        case.id,
        "open",
        1,
        1,
    )
    state = await store.case_state(case.id)
    assert state is not None and (state.listener, state.status) == ("L", "open")
    assert await store.case_state(case.id + 100) is None


async def test_follow_ups_find_open_cases_only(store: Store, message: MessageFactory) -> None:
    mail = message(message_id="<first@example.com>")
    async with store.transaction() as tx:
        customer = await tx.create_customer("Cliente", "cliente@example.com", "auto")
        case = await tx.create_case(_case(customer.id))
        await tx.add_message(case.id, mail)
        await tx.add_participants(case.id, ["Otro@Example.com", " "])
    async with store.transaction() as tx:
        assert await tx.open_case_by_subject(customer.id, "ventas", "factura") == case
        assert await tx.open_case_by_subject(customer.id, None, "factura") is None
        [found] = await tx.cases_by_message_ids(["<first@example.com>", "<x@example.com>"])
        assert found.ref == case and found.listener == "L"
        by_number = await tx.case_by_number(case.case_number)
        assert by_number is not None and by_number.ref == case
        by_id = await tx.case_by_number(str(case.id))  # "[Case#1]" for case 000001
        assert by_id is not None and by_id.ref == case
        # Digits too many for an id are no case (not a database error), in both stores
        assert await tx.case_by_number("1" * 25) is None
        assert await tx.closed_case_by_number("9" * 19) is None
        assert await tx.is_participant(case.id, "otro@example.com")
        assert await tx.is_participant(case.id, "CLIENTE@example.com")  # the customer's
        assert not await tx.is_participant(case.id, "extra@example.com")
        asked = ["otro@example.com", "CLIENTE@example.com", "extra@example.com"]
        said = [await tx.cases_by_message_ids(["<first@example.com>"], a) for a in asked]
        assert [c.takes_part for [c] in said] == [True, True, False]  # as is_participant
        assert found.takes_part is None  # not asked
        await tx.set_case_status(case.id, "pending-approval")
    async with store.transaction() as tx:  # awaiting approval: still joined
        assert await tx.open_case_by_subject(customer.id, "ventas", "factura") == case
        await tx.set_case_status(case.id, "rejected", touch=True)
    async with store.transaction() as tx:
        assert await tx.open_case_by_subject(customer.id, "ventas", "factura") is None
        assert await tx.cases_by_message_ids(["<first@example.com>"]) == []
        assert await tx.case_by_number(case.case_number) is None


async def test_approval_reads_the_first_mail_and_applies_decisions(
    store: Store, message: MessageFactory
) -> None:
    first, second = message(raw=b"first\r\n"), message(raw=b"second\r\n")
    async with store.transaction() as tx:
        case = await tx.create_case(_case())
        row = await tx.add_message(case.id, first)
        await tx.add_message(case.id, second)
        await tx.add_ledger(MailKey("L", "INBOX", "1", "1"), row, first)
        assert await tx.first_message(case.id) == (row, b"first\r\n")
        await tx.apply_decision(case.id, row, "soporte", 2, ["vip", "vip"], True)
        info = await tx.case_info(case.id)
    assert info.inbox == "soporte"
    [summary] = await store.list_cases()
    assert summary.inbox == "soporte" and summary.messages == 2


async def test_imported_customers(store: Store) -> None:
    async with store.transaction() as tx:
        made = await tx.import_customer("ACME", "ext-1")
        await tx.add_customer_address(made, "compras@acme.example")
        await tx.add_customer_address(made, "compras@acme.example")  # kept once
        assert await tx.customer_by_external_id("ext-1") == made
        assert await tx.customer_by_external_id("ext-2") is None
        assert await tx.address_owner("compras@acme.example") == made
        await tx.update_customer(made, "", None)  # empty name, no id: both kept
        await tx.update_customer(made, "ACME S.A.", "ext-9")
        assert await tx.customer_by_external_id("ext-9") == made
    [customer] = await store.list_customers()
    assert (customer.name, customer.addresses) == ("ACME S.A.", ("compras@acme.example",))


async def test_sql_hooks_run_inside_the_mail_transaction(store: Store) -> None:
    async with store.transaction() as tx:
        found = await tx.run_sync(
            lambda execute: execute("SELECT 'ventas' AS inbox", {}).fetchone()
        )
        inline = tx.run_inline(lambda execute: execute("SELECT 2 AS priority", {}).fetchone(), 1e12)
    assert tuple(found) == ("ventas",) and tuple(inline) == (2,)


async def test_routing_sets_process_status_priority_and_tags_and_new_text_is_kept(
    store: Store, message: MessageFactory
) -> None:
    async with store.transaction() as tx:
        case = await tx.create_case(_case())
        first = dataclasses.replace(message(), new_text="Lo nuevo")
        row = await tx.add_message(case.id, first)
        old = await tx.add_message(case.id, message())  # stored without a new text
        await tx.apply_decision(case.id, row, None, 3, ["b", "a", "b"], None)
        await tx.apply_decision(
            case.id, row, "soporte", None, [], False, process="cobros", status="closed"
        )
        info = await tx.case_info(case.id)
        assert await tx.message_new_text(row) == "Lo nuevo"
        assert await tx.message_new_text(old) is None
    assert (info.inbox, info.priority, info.tags) == ("soporte", 3, ("a", "b"))
    assert (info.process, info.status) == ("cobros", "closed")
