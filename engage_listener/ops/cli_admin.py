"""The commands that read and change the store's rows directly: `acks`, `cases` (the
list; `cases_cli` has show/export/close/reopen), `customers`, `quarantine`.

Decisions: apart from `cli` for size; like `cli`, each imports `admin`/`commands` when
it runs, so `run` does not pay for them at start-up. Exit codes are `cli_common`'s.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from engage_listener.ops.cli_common import (
    EXIT_FAILURE,
    EXIT_OK,
    load,
    print_json,
    run_queue,
    with_store,
)
from engage_listener.ops.terminal import visible, visible_fields
from engage_listener.outbox import delivery as outbox
from engage_listener.store.interface import Store


def cmd_acks(args: argparse.Namespace) -> int:
    from engage_listener.ops import admin  # noqa: PLC0415 - start-up time

    async def change(store: Store, ids: Sequence[int], resend: bool) -> Sequence[Any]:
        return await (admin.resend_acks if resend else admin.close_acks)(store, ids)

    return run_queue(
        args,
        load(args.config),
        change=change,
        listing=admin.list_acks,
        states=outbox.STATES,
        print_rows=_print_acks,
    )


def _print_acks(rows: Sequence[Any]) -> None:
    rows = [visible_fields(r) for r in rows]
    print(f"{'ID':>5} {'CASE':<8} {'LISTENER':<12} {'STATE':<10} {'TRIES':>5}  RECIPIENT / SUBJECT")
    for r in rows:
        print(
            f"{r.id:>5} {r.case_number or '-':<8} {r.listener[:12]:<12} {r.state:<10} "
            f"{r.attempts:>5}  {r.recipient} / {r.subject}\n"
            f"      created {r.created_at}, sent {r.sent_at or '-'}, "
            f"Message-ID {r.smtp_message_id}"
            + (f", next attempt {r.next_attempt_at}" if r.next_attempt_at else "")
            + (f"\n      last error: {' '.join(r.last_error.split())}" if r.last_error else "")
        )
    print(f"{len(rows)} acknowledgement(s)")


def cmd_cases(args: argparse.Namespace) -> int:
    from engage_listener.ops import cases_cli, commands  # noqa: PLC0415 - start-up time

    config = load(args.config)
    if args.action not in (None, "list"):
        return cases_cli.run_cases(args, config)
    cases = asyncio.run(commands.list_cases(config))
    if args.pending:
        cases = [c for c in cases if c.status == "pending-approval"]
    if args.json:
        print_json([asdict(c) for c in cases])
        return EXIT_OK
    cases = [visible_fields(c) for c in cases]
    print(
        f"{'ID':>5} {'CASE':<8} {'LISTENER':<12} {'STATUS':<16} {'INBOX':<12} "
        f"{'MSGS':>4} {'ATT':>4}  SENDER / SUBJECT"
    )
    for c in cases:
        print(
            f"{c.id:>5} {c.case_number:<8} {c.listener[:12]:<12} {c.status:<16} "
            f"{(c.inbox or '-')[:12]:<12} {c.messages:>4} {c.attachments:>4}  "
            f"{c.sender} / {c.subject}"
            + (f"  [related to case {c.related_case_number}]" if c.related_case_id else "")
            + (f"  [ack {c.ack}]" if c.ack else "")
        )
    print(f"{len(cases)} case(s)")
    return EXIT_OK


def cmd_customers(args: argparse.Namespace) -> int:
    from engage_listener.ops import admin  # noqa: PLC0415 - start-up time

    config = load(args.config)
    if args.action == "import":
        if not args.file.is_file():
            print(f"engage-listener: cannot read {args.file}", file=sys.stderr)
            return EXIT_FAILURE
        result = asyncio.run(with_store(config, lambda s: admin.import_customers(s, args.file)))
        for problem in result.problems:
            print(problem, file=sys.stderr)
        print(
            f"{result.created} created, {result.updated} updated, {result.addresses} "
            f"addresses, {len(result.problems)} problem(s)"
        )
        return EXIT_FAILURE if result.problems else EXIT_OK
    customers = asyncio.run(with_store(config, admin.list_customers))
    if args.json:
        print_json([asdict(c) for c in customers])
    else:
        for c in map(visible_fields, customers):
            print(f"{c.id:>6}  {c.name}  <{', '.join(c.addresses)}>")
        print(f"{len(customers)} customer(s)")
    return EXIT_OK


def cmd_quarantine(args: argparse.Namespace) -> int:
    from engage_listener.ops import admin, commands  # noqa: PLC0415 - start-up time

    config = load(args.config)
    if args.action == "replay":
        for line in asyncio.run(commands.replay_quarantine(config, args.ids)):
            print(visible(line))
        return EXIT_OK
    if args.action == "show":
        found = asyncio.run(with_store(config, lambda s: admin.get_quarantine(s, args.id)))
        if found is None:
            print(f"engage-listener: no quarantine entry {args.id}", file=sys.stderr)
            return EXIT_FAILURE
        entry, raw = found
        if args.raw:
            sys.stdout.buffer.write(raw)
        else:
            for key, value in asdict(entry).items():
                print(f"{key:>11}: {visible(str(value))}")
        return EXIT_OK
    entries = asyncio.run(
        with_store(config, lambda s: admin.list_quarantine(s, include_replayed=args.all))
    )
    if args.json:
        print_json([asdict(e) for e in entries])
        return EXIT_OK
    for e in map(visible_fields, entries):
        print(
            f"{e.id:>5} {e.listener[:12]:<12} {e.state:<8} tries={e.attempts} "
            f"{e.sender} / {e.subject}\n      reason: {e.reason}"
        )
    print(f"{len(entries)} quarantined mail(s)")
    return EXIT_OK
