"""What `cases show|export|close|reopen` and `attachments save` do on the command line
(the grammar is `cli_parser`'s; `cli` dispatches here). Kept apart from `cli` for size.

Exit codes as `cli`: 0 success, 1 when a case was not found or not changed.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from dataclasses import asdict
from typing import Any

from engage_listener.config.model import Config
from engage_listener.errors import EngageError
from engage_listener.ops import attachment_save, case_export, case_status
from engage_listener.ops.case_view import load_case, render_case
from engage_listener.ops.cli_common import EXIT_OK, report, with_store
from engage_listener.ops.terminal import json_text, visible
from engage_listener.store.interface import Store

__all__ = ["run_attachments", "run_cases"]


def events_wanted(config: Config) -> case_status.EventsWanted:
    """Each listener's Webhook Events: what the CRM hears of an operator's close/reopen."""
    return {lst.id: lst.webhook.events for lst in config.listeners if lst.webhook is not None}


def run_cases(args: argparse.Namespace, config: Config) -> int:
    """`cases show|export|close|reopen`."""
    as_json = bool(getattr(args, "json", False))
    if args.action == "show":
        return _show(config, args.case_id, as_json)
    if args.action == "export":
        since = case_export.since_day(args.since) if args.since else None
        count = asyncio.run(
            with_store(
                config,
                lambda s: case_export.export_cases(
                    s,
                    sys.stdout,
                    args.format,
                    since=since,
                    listener=args.listener,
                    formulas=args.csv_formulas,
                ),
            )
        )
        print(f"{count} case(s) exported", file=sys.stderr)
        return EXIT_OK
    if args.action == "reopen":
        changes = asyncio.run(
            with_store(
                config, lambda s: case_status.reopen_cases(s, args.ids, events_wanted(config))
            )
        )
        return report(changes, as_json)
    return _close(args, config, as_json)


def _close(args: argparse.Namespace, config: Config, as_json: bool) -> int:
    if args.idle_days is not None and args.ids:
        raise EngageError("cases close: give case IDs or --idle-days N, not both")
    if args.idle_days is None and not args.ids:
        raise EngageError("cases close: give case IDs or --idle-days N")
    if args.idle_days is not None:
        days = args.idle_days
        changes = asyncio.run(
            with_store(
                config,
                lambda s: case_status.close_idle(
                    s, days, args.reason, events=events_wanted(config)
                ),
            )
        )
        if not as_json and not changes:
            print(f"no open case without mail for {days} days")
    else:
        changes = asyncio.run(
            with_store(
                config,
                lambda s: case_status.close_cases(s, args.ids, args.reason, events_wanted(config)),
            )
        )
    return report(changes, as_json)


def _show(config: Config, case_id: int, as_json: bool) -> int:
    async def work(store: Store) -> dict[str, Any] | None:
        case = await store.case_detail(case_id)
        return None if case is None else await load_case(store, case)

    doc = asyncio.run(with_store(config, work))
    if doc is None:
        raise EngageError(f"no case {case_id}")
    print(json_text(doc) if as_json else render_case(doc))
    return EXIT_OK


def run_attachments(args: argparse.Namespace, config: Config) -> int:
    """`attachments save CASE_ID --to DIR`."""
    saved = asyncio.run(
        with_store(config, lambda s: attachment_save.save_attachments(s, args.case_id, args.to))
    )
    if args.json:
        print(json_text([asdict(s) for s in saved]))
        return EXIT_OK
    for item in saved:
        print(visible(f"{item.path} ({item.size} bytes; was {item.original_name!r})"))
    print(f"{len(saved)} attachment(s) saved in {visible(str(args.to))}")
    return EXIT_OK
