"""`engage-listener webhooks [list] | resend ID... | close ID...`: the CRM's event outbox.

Like `acks`: list what was not delivered (or any state), put failed or closed events back
to pending (due now, attempts from 0; the same event id, so the CRM can still drop a
repeat), or close failed or pending ones (never to be sent; later events of the case are
no longer held behind them). Run from a second process while the daemon works, through the
store interface.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from dataclasses import dataclass

from engage_listener.config.model import Config
from engage_listener.ops.cli_common import run_queue
from engage_listener.ops.terminal import visible_fields
from engage_listener.outbox.webhooks import CLOSABLE, POLL, RESENDABLE, STATES, now_iso
from engage_listener.store.interface import Store, WebhookEventRow
from engage_listener.store.records import WebhookState


@dataclass(frozen=True)
class WebhookChange:
    """What `webhooks resend`/`close` did with one id; `done` False: nothing changed."""

    id: int
    done: bool
    text: str


async def list_events(
    store: Store, states: Sequence[WebhookState] | None = None
) -> list[WebhookEventRow]:
    return await store.list_webhook_events(states)


def _what(row: WebhookEventRow) -> str:
    return f"webhook event {row.id} ({row.event}, case {row.case_number}, id {row.event_id})"


def _refusal(row: WebhookEventRow, allowed: Sequence[WebhookState]) -> str:
    reasons = {
        "delivered": f"was delivered at {row.delivered_at} ({row.response})",
        "pending": "is pending: the daemon delivers it when due",
        "closed": "is already closed",
        "failed": "has failed",
    }
    states = " or ".join(allowed)
    return f"{_what(row)} {reasons[row.state]}; only {states} ones can be changed, nothing done"


async def change_events(store: Store, ids: Sequence[int], *, resend: bool) -> list[WebhookChange]:
    """`webhooks resend` (failed/closed -> pending, due now) or `close` (failed/pending)."""
    allowed = RESENDABLE if resend else CLOSABLE
    changes: list[WebhookChange] = []
    for row_id in ids:
        async with store.transaction() as tx:  # read and write under one write lock
            row = await tx.get_webhook_event(row_id)
            if row is None:
                changes.append(WebhookChange(row_id, False, f"{row_id}: no such webhook event"))
                continue
            if row.state not in allowed:
                changes.append(WebhookChange(row_id, False, _refusal(row, allowed)))
                continue
            was = f"was {row.state}" + (f": {row.last_error}" if row.last_error else "")
            if resend:
                note = f"queued again by the operator at {now_iso()} ({was})"
                state: WebhookState = "pending"
                due: float | None = time.time()
                text = (f"{_what(row)} queued again (was {row.state}): the running daemon "
                        f"sends it within {POLL:.0f} s, or the next run --once does")  # fmt: skip
            else:
                note = f"closed by the operator at {now_iso()} ({was})"
                state, due = "closed", None
                text = f"{_what(row)} closed (was {row.state}): it will not be sent"
            done = await tx.change_webhook_event(row_id, state, note, allowed, next_attempt_at=due)
            text = text if done else f"{_what(row)}: changed meanwhile"
            changes.append(WebhookChange(row_id, done, text))
    return changes


def _print_rows(rows: Sequence[WebhookEventRow]) -> None:
    print(f"{'ID':>5} {'CASE':<8} {'LISTENER':<12} {'STATE':<10} {'TRIES':>5}  EVENT / EVENT ID")
    for r in map(visible_fields, rows):
        print(
            f"{r.id:>5} {r.case_number or '-':<8} {r.listener[:12]:<12} {r.state:<10} "
            f"{r.attempts:>5}  {r.event} / {r.event_id}\n"
            f"      created {r.created_at}, delivered {r.delivered_at or '-'}"
            + (f" ({r.response})" if r.response else "")
            + (f", next attempt {r.next_attempt_at}" if r.next_attempt_at else "")
            + (f"\n      last error: {' '.join(r.last_error.split())}" if r.last_error else "")
        )
    print(f"{len(rows)} webhook event(s)")


def cmd_webhooks(args: argparse.Namespace, config: Config) -> int:
    """The command; returns the exit code (1 when a resend/close changed not every id)."""

    async def change(store: Store, ids: Sequence[int], resend: bool) -> list[WebhookChange]:
        return await change_events(store, ids, resend=resend)

    return run_queue(
        args, config, change=change, listing=list_events, states=STATES, print_rows=_print_rows
    )
