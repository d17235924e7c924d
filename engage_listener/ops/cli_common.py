"""What the command modules (`cli`, `cli_admin`, `cases_cli`, `webhooks`) share: exit
codes, the open-work-close of the store, printing outcomes, the acks/webhooks queues.

Decisions: one module so each command module does not carry its own copy (they had
grown three identical `_with_store`s); it imports nothing heavy, so `run` still
pays nothing for the operator commands at start-up.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, TypeVar

from engage_listener.config.load import load_config
from engage_listener.config.model import Config
from engage_listener.ops.cli_parser import DEFAULT_CONFIG
from engage_listener.ops.terminal import json_text, visible
from engage_listener.store.interface import Store
from engage_listener.store.open import open_store

T = TypeVar("T")

EXIT_OK, EXIT_FAILURE, EXIT_CONFIG = 0, 1, 2


async def with_store(config: Config, work: Callable[[Store], Awaitable[T]]) -> T:
    """Open the configured store, run `work` on it, close it whatever happens."""
    store = await open_store(config.store)
    try:
        return await work(store)
    finally:
        await store.close()


def print_json(value: Any) -> None:
    print(json_text(value))


def report(outcomes: Sequence[Any], as_json: bool) -> int:
    """Print what was done to each item (`text`, or all as JSON, each a dataclass);
    exit code 1 unless every one is `done`."""
    if as_json:
        print_json([asdict(o) for o in outcomes])
    else:
        for outcome in outcomes:
            print(visible(outcome.text))
    return EXIT_OK if all(o.done for o in outcomes) else EXIT_FAILURE


def default_config() -> Path:
    """$ENGAGE_LISTENER_CONFIG, else the packaged default path."""
    env = os.environ.get("ENGAGE_LISTENER_CONFIG")
    return Path(env) if env else DEFAULT_CONFIG


def load(path: Path | None) -> Config:
    """The configuration a command was given (--config), else the default one."""
    return load_config(path or default_config())


def run_queue(
    args: argparse.Namespace,
    config: Config,
    *,
    change: Callable[[Store, Sequence[int], bool], Awaitable[Sequence[Any]]],
    listing: Callable[[Store, Any], Awaitable[Sequence[Any]]],
    states: Sequence[str],
    print_rows: Callable[[Sequence[Any]], None],
) -> int:
    """The queues an operator tends (`acks`, `webhooks`): `resend|close ID...` calls
    `change(store, ids, resend)` and reports (exit 1 unless every one changed); else the
    rows in `--state` (`all`: every one of `states`) are listed, or printed as JSON."""
    if args.action in ("resend", "close"):
        resend = args.action == "resend"
        changes = asyncio.run(with_store(config, lambda s: change(s, args.ids, resend)))
        return report(changes, args.json)
    wanted = list(states) if args.state and "all" in args.state else args.state
    rows = asyncio.run(with_store(config, lambda s: listing(s, wanted)))
    if args.json:
        print_json([asdict(r) for r in rows])
    else:
        print_rows(rows)
    return EXIT_OK
