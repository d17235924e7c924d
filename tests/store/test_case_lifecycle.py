"""Issue 18.1-2: closing and reopening cases, the closed cases a follow-up may name, and
the reads behind `cases show`, `cases export` and `attachments save`."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from engage_listener.store.interface import NewAttachment, NewCase, NewMessage, Store

MessageFactory = Callable[..., NewMessage]  # the `message` fixture
AT = "2026-01-10T09:00:00+00:00"


def _case(
    customer_id: int | None = None, listener: str = "L", related: int | None = None
) -> NewCase:
    return NewCase(
        listener=listener,
        process="ventas",
        sender="cliente@example.com",
        sender_name="Cliente",
        subject="Factura",
        normalized_subject="factura",
        customer_id=customer_id,
        related_case_id=related,
    )


async def test_close_and_reopen_change_only_the_status_they_expect(
    store: Store, message: MessageFactory
) -> None:
    async with store.transaction() as tx:
        case = await tx.create_case(_case())
        await tx.add_message(case.id, message(message_id="<a@example.com>"))
    async with store.transaction() as tx:
        assert not await tx.reopen_case(case.id, AT)  # open: nothing to reopen
        assert await tx.close_case(case.id, "resuelto", AT)
        assert not await tx.close_case(case.id, "otra vez", AT)  # closed already
        assert await tx.cases_by_message_ids(["<a@example.com>"]) == []
        assert await tx.case_by_number(case.case_number) is None
        [closed] = await tx.closed_cases_by_message_ids(["<a@example.com>"])
        assert (closed.ref, closed.closed_at) == (case, AT)
    detail = await store.case_detail(case.id)
    assert detail is not None
    assert (detail.status, detail.closed_at, detail.close_reason) == ("closed", AT, "resuelto")
    async with store.transaction() as tx:
        by_number = await tx.closed_case_by_number(case.case_number)
        by_id = await tx.closed_case_by_number(str(case.id))
        assert by_number is not None and by_id is not None and by_id.ref == case
        assert await tx.reopen_case(case.id, "2026-01-11T09:00:00+00:00")
        assert await tx.closed_case_by_number(case.case_number) is None
    detail = await store.case_detail(case.id)
    assert detail is not None
    assert (detail.status, detail.closed_at, detail.close_reason, detail.reopened_at) == (
        "open", None, None, "2026-01-11T09:00:00+00:00",
    )  # fmt: skip


async def test_rejected_cases_are_never_closed_and_a_routing_status_closes(
    store: Store, message: MessageFactory
) -> None:
    async with store.transaction() as tx:
        rejected = await tx.create_case(_case())
        await tx.set_case_status(rejected.id, "rejected")
        assert not await tx.close_case(rejected.id, None, AT)
        routed = await tx.create_case(_case())
        row = await tx.add_message(routed.id, message())
        await tx.apply_decision(routed.id, row, None, None, (), None, status="closed")
        by_hook = await tx.create_case(_case())
        await tx.set_case_status(by_hook.id, "closed")
    for case_id in (routed.id, by_hook.id):
        detail = await store.case_detail(case_id)
        assert detail is not None and detail.status == "closed" and detail.closed_at
    async with store.transaction() as tx:
        await tx.set_case_status(by_hook.id, "open")
    detail = await store.case_detail(by_hook.id)
    assert detail is not None and detail.closed_at is None


async def test_the_customers_closed_case_by_subject(store: Store) -> None:
    async with store.transaction() as tx:
        customer = await tx.create_customer("Cliente", "cliente@example.com", "auto")
        older = await tx.create_case(_case(customer.id))
        newer = await tx.create_case(_case(customer.id))
        for case in (older, newer):
            await tx.close_case(case.id, None, AT)
        found = await tx.closed_case_by_subject(customer.id, "ventas", "factura")
        assert found is not None and found.ref == newer and found.closed_at == AT
        assert await tx.closed_case_by_subject(customer.id, None, "factura") is None
        assert await tx.closed_case_by_subject(None, "ventas", "factura") is None
        assert await tx.open_case_by_subject(customer.id, "ventas", "factura") is None


async def test_open_and_closed_cases_by_subject_in_one_look_up(store: Store) -> None:
    """`cases_by_subject` says what `open_case_by_subject` and `closed_case_by_subject`
    say, each as alone."""
    async with store.transaction() as tx:
        customer = await tx.create_customer("Cliente", "cliente@example.com", "auto")
        closed = await tx.create_case(_case(customer.id))
        await tx.close_case(closed.id, None, AT)
        pending = await tx.create_case(_case(customer.id))
        await tx.set_case_status(pending.id, "pending-approval")
        asked = [(customer.id, "ventas", "factura"), (customer.id, None, "factura"),
                 (None, "ventas", "factura"), (customer.id, "ventas", "")]  # fmt: skip
        both = [await tx.cases_by_subject(*a) for a in asked]
        alone = [
            (await tx.open_case_by_subject(*a), await tx.closed_case_by_subject(*a)) for a in asked
        ]
        await tx.set_case_status(pending.id, "rejected")
        only_closed = await tx.cases_by_subject(customer.id, "ventas", "factura")
    assert both == alone
    assert both[0][0] == pending and both[0][1] is not None and both[0][1].ref == closed
    assert both[1:] == [(None, None)] * 3
    assert only_closed[0] is None and only_closed[1] == both[0][1]


async def test_idle_cases_are_open_ones_whose_newest_mail_is_older(
    store: Store, message: MessageFactory
) -> None:
    async with store.transaction() as tx:
        quiet = await tx.create_case(_case())
        await tx.add_message(quiet.id, message())
        closed = await tx.create_case(_case())
        await tx.close_case(closed.id, None, AT)
    assert await store.idle_cases("2000-01-01T00:00:00+00:00") == []
    assert await store.idle_cases("2999-01-01T00:00:00+00:00") == [quiet.id]
    async with store.transaction() as tx:  # mail came after the cut-off: left open
        assert not await tx.close_case(quiet.id, None, AT, idle_before="2000-01-01T00:00:00+00:00")
        assert await tx.close_case(quiet.id, None, AT, idle_before="2999-01-01T00:00:00+00:00")


async def test_case_detail_messages_and_attachments(store: Store, message: MessageFactory) -> None:
    raw = (
        b"From: Cliente <cliente@example.com>\r\nTo: soporte@example.org\r\n"
        b"Cc: jefe@example.com\r\nReply-To: otro@example.com\r\nSubject: Factura\r\n\r\nhola\r\n"
    )
    async with store.transaction() as tx:
        first = await tx.create_case(_case())
        later = await tx.create_case(_case(related=first.id))
        mail = dataclasses.replace(message(raw=raw), new_text="hola", body_html="<p>hola</p>")
        row = await tx.add_message(first.id, mail)
        await tx.add_attachment(row, NewAttachment("a.pdf", "application/pdf", b"%PDF-1"))
        await tx.add_attachment(
            row, NewAttachment("m.eml", "message/rfc822", raw, raw_of_message=True)
        )
        await tx.apply_decision(first.id, row, "Ventas", 2, ("vip",), False)
    detail = await store.case_detail(first.id)
    assert detail is not None and detail.related == (later,)
    assert (detail.inbox, detail.priority, detail.tags) == ("Ventas", 2, ("vip",))
    later_detail = await store.case_detail(later.id)
    assert later_detail is not None and later_detail.related == (first,)
    assert await store.case_detail(later.id + 10) is None
    [stored] = await store.case_messages(first.id)
    assert (stored.new_text, stored.has_html, stored.acknowledge) == ("hola", True, False)
    assert stored.header.startswith(b"From: Cliente") and stored.size == len(raw)
    pdf, eml = await store.case_attachments(first.id)
    assert (pdf.filename, pdf.content_type, pdf.size) == ("a.pdf", "application/pdf", 6)
    assert await store.attachment_content(pdf.id) == b"%PDF-1"
    assert await store.attachment_content(eml.id) == raw  # the message's raw, stored once
    assert await store.attachment_content(eml.id + 10) is None


async def test_cases_page_by_id_listener_and_change_time(
    store: Store, message: MessageFactory
) -> None:
    async with store.transaction() as tx:
        made = [await tx.create_case(_case(listener=name)) for name in ("L", "M", "L", "L")]
    everything = await store.cases_page(0, 2)
    assert [c.id for c in everything] == [made[0].id, made[1].id]
    rest = await store.cases_page(everything[-1].id, 2)
    assert [c.id for c in rest] == [made[2].id, made[3].id]
    only_l = await store.cases_page(0, 10, listener="L")
    assert [c.id for c in only_l] == [made[0].id, made[2].id, made[3].id]
    assert await store.cases_page(0, 10, since="2999-01-01T00:00:00+00:00") == []
    assert len(await store.cases_page(0, 10, since="2000-01-01T00:00:00+00:00")) == 4
