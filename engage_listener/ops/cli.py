"""Command line: `engage-listener run | check-config | cases | attachments | status | acks ...`.

Exit codes: 0 success, 2 configuration errors, 1 any other failure. Problems are
printed as plain lines for operators, never as tracebacks. Everything printed passes
through `terminal` (control characters from mail made visible, JSON included).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, TypeVar

from engage_listener.config import secret_refs as secrets
from engage_listener.config.cautions import config_warnings
from engage_listener.config.load import load_config
from engage_listener.config.model import Config, describe
from engage_listener.errors import ConfigError, EngageError
from engage_listener.observe.logs import configure_logging
from engage_listener.ops.cli_parser import DEFAULT_CONFIG, build_parser
from engage_listener.ops.terminal import (
    json_text,
    safe_json,
    visible,
    visible_fields,
    visible_lines,
)
from engage_listener.outbox import delivery as outbox
from engage_listener.service import app, build
from engage_listener.store.interface import Store
from engage_listener.store.open import copy_into, open_store

# The operator commands' modules (commands, admin, diagnose, mailsearch) are imported by
# the functions that use them, so `run` does not pay for them at start-up.

T = TypeVar("T")

EXIT_OK, EXIT_FAILURE, EXIT_CONFIG = 0, 1, 2


def _default_config() -> Path:
    env = os.environ.get("ENGAGE_LISTENER_CONFIG")
    return Path(env) if env else DEFAULT_CONFIG


def _print_json(value: Any) -> None:
    print(json_text(value))


def _report(outcomes: Sequence[Any], as_json: bool) -> int:
    """Print what was done to each item (`text`, or all as JSON); 1 unless all `done`."""
    if as_json:
        _print_json([asdict(o) for o in outcomes])
    else:
        for outcome in outcomes:
            print(visible(outcome.text))
    return EXIT_OK if all(o.done for o in outcomes) else EXIT_FAILURE


def _load(path: Path | None) -> Config:
    return load_config(path or _default_config())


def _report_config_error(exc: ConfigError) -> int:
    for problem in exc.problems:
        print(visible(str(problem)), file=sys.stderr)
    print(f"{len(exc.problems)} configuration problem(s)", file=sys.stderr)
    return EXIT_CONFIG


def cmd_check_config(args: argparse.Namespace) -> int:
    config = _load(args.path or args.config)
    build.load_hooks(config)
    graph = f", {len(config.graph_listeners)} Graph" if config.graph_listeners else ""
    print(
        f"{config.path}: OK, {len(config.imap_listeners)} IMAP{graph} and "
        f"{len(config.pop3_listeners)} POP3 listener(s), "
        f"store {config.store.where}"
    )
    for listener in config.listeners:
        print(f"  {describe(listener)}")
    for warning in config_warnings(config):
        print(f"  warning: {warning}")
    if args.show:
        _show(config)
    return EXIT_OK


def cmd_decide(args: argparse.Namespace) -> int:
    from engage_listener.ops import commands  # noqa: PLC0415 - start-up time

    config = _load(args.config)
    decisions = asyncio.run(
        commands.decide_cases(config, args.cases, approve=args.command == "approve")
    )
    return _report(decisions, args.json)


def cmd_control(args: argparse.Namespace) -> int:
    from engage_listener.ops import commands  # noqa: PLC0415 - start-up time

    config = _load(args.config)
    day = args.date if args.command == "reset" else None
    result = asyncio.run(commands.control_listener(config, args.listener, day))
    if args.json:
        _print_json(asdict(result))
    else:
        print(visible(result.message))
    return EXIT_OK


def cmd_search(args: argparse.Namespace) -> int:
    from engage_listener.ops import commands  # noqa: PLC0415 - start-up time
    from engage_listener.ops.search import Criteria  # noqa: PLC0415
    from engage_listener.ops.search import render as render_search  # noqa: PLC0415

    config = _load(args.config)
    cfg = {c.id: c for c in config.listeners}.get(args.listener)
    folder = args.folder or (cfg.input_folder if cfg else "INBOX")
    criteria = Criteria(folder, args.sender, args.subject, args.since, args.before, args.limit)
    hits = asyncio.run(commands.search(config, args.listener, criteria))
    print(json_text([asdict(h) for h in hits]) if args.json else render_search(hits))
    return EXIT_OK


def cmd_rules(args: argparse.Namespace) -> int:
    from engage_listener.ops import rules  # noqa: PLC0415 - start-up time

    config = _load(args.config)
    report = rules.run_rules(config, args.file, args.listener)
    print(rules.render_json(report) if args.json else rules.render_text(report))
    return EXIT_OK


def cmd_test_connection(args: argparse.Namespace) -> int:
    from engage_listener.ops import commands, diagnose  # noqa: PLC0415 - start-up time

    config = _load(args.config)
    steps = asyncio.run(
        commands.test_connections(
            config, args.listeners, create_folders=args.create_folders, send_to=args.send_to
        )
    )
    text = diagnose.render_json(steps) if args.json else diagnose.render_text(steps)
    print(safe_json(text) if args.json else visible_lines(text))
    return EXIT_OK if diagnose.succeeded(steps) else EXIT_FAILURE


def cmd_auth(args: argparse.Namespace) -> int:
    from engage_listener.ops import commands  # noqa: PLC0415 - start-up time

    config = _load(args.config)
    if args.action == "login":
        return asyncio.run(
            commands.auth_login(
                config, args.listener, sys.stdout, sys.stdin, device_code=args.device_code
            )
        )
    rows = commands.auth_statuses(config)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for row in rows:
            print("  ".join(f"{k}={v}" for k, v in row.items()))
        print(f"{len(rows)} OAuth2 account(s)")
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    from engage_listener.ops import commands  # noqa: PLC0415 - start-up time

    config = _load(args.config)
    if not args.json:
        print(visible_lines(asyncio.run(commands.status(config))), end="")
        return EXIT_OK
    kinds = {c.id: c.protocol for c in config.listeners}
    rows = asyncio.run(commands.status_rows(config))
    _print_json([{"listener": r.listener, "kind": kinds[r.listener], **asdict(r)} for r in rows])
    return EXIT_OK


def cmd_cluster(args: argparse.Namespace) -> int:
    from engage_listener.ops import cluster, commands  # noqa: PLC0415 - start-up time

    view = asyncio.run(commands.cluster_view(_load(args.config)))
    if args.json:
        _print_json(cluster.as_json(view))
    else:
        print(visible_lines(cluster.render_cluster(view)), end="")
    return EXIT_OK


def cmd_acks(args: argparse.Namespace) -> int:
    from engage_listener.ops import admin  # noqa: PLC0415 - start-up time

    config = _load(args.config)
    if args.action in ("resend", "close"):
        change = admin.resend_acks if args.action == "resend" else admin.close_acks
        changes = asyncio.run(_with_store(config, lambda s: change(s, args.ids)))
        return _report(changes, args.json)
    states = list(outbox.STATES) if args.state and "all" in args.state else args.state
    rows = asyncio.run(_with_store(config, lambda s: admin.list_acks(s, states)))
    if args.json:
        _print_json([asdict(r) for r in rows])
        return EXIT_OK
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
    return EXIT_OK


def cmd_webhooks(args: argparse.Namespace) -> int:
    from engage_listener.ops import webhooks  # noqa: PLC0415 - start-up time

    return webhooks.cmd_webhooks(args, _load(args.config))


def cmd_keygen(args: argparse.Namespace) -> int:
    path = args.key_file or secrets.default_key_path()
    secrets.generate_key(path)
    print(f"created {path} (mode 0600); keep a copy: without it enc: passwords cannot be read")
    return EXIT_OK


def cmd_encrypt_password(args: argparse.Namespace) -> int:
    key = secrets.load_key(args.key_file or secrets.default_key_path())
    secret = secrets.read_secret_interactively(sys.stdin, sys.stderr)
    print(secrets.encrypt(secret, key))
    return EXIT_OK


def _show(config: Config) -> None:
    """The effective configuration: Secret fields print as ***, SMTP passwords are hidden."""
    for listener in config.listeners:
        print(f"[{listener.id}]")
        for item in dataclasses.fields(listener):
            print(f"  {item.name} = {getattr(listener, item.name)!r}")


def cmd_run(args: argparse.Namespace) -> int:
    config = _load(args.config)
    json_logs = None if args.log_format is None else args.log_format == "json"
    configure_logging(json=json_logs, level=args.log_level)
    return asyncio.run(app.run(config, once=args.once))


def cmd_cases(args: argparse.Namespace) -> int:
    from engage_listener.ops import cases_cli, commands  # noqa: PLC0415 - start-up time

    config = _load(args.config)
    if args.action not in (None, "list"):
        return cases_cli.run_cases(args, config)
    cases = asyncio.run(commands.list_cases(config))
    if args.pending:
        cases = [c for c in cases if c.status == "pending-approval"]
    if args.json:
        _print_json([asdict(c) for c in cases])
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


async def _with_store(config: Config, work: Callable[[Store], Awaitable[T]]) -> T:
    store = await open_store(config.store)
    try:
        return await work(store)
    finally:
        await store.close()


def cmd_attachments(args: argparse.Namespace) -> int:
    from engage_listener.ops import cases_cli  # noqa: PLC0415 - start-up time

    return cases_cli.run_attachments(args, _load(args.config))


def cmd_customers(args: argparse.Namespace) -> int:
    from engage_listener.ops import admin  # noqa: PLC0415 - start-up time

    config = _load(args.config)
    if args.action == "import":
        if not args.file.is_file():
            print(f"engage-listener: cannot read {args.file}", file=sys.stderr)
            return EXIT_FAILURE
        result = asyncio.run(_with_store(config, lambda s: admin.import_customers(s, args.file)))
        for problem in result.problems:
            print(problem, file=sys.stderr)
        print(
            f"{result.created} created, {result.updated} updated, {result.addresses} "
            f"addresses, {len(result.problems)} problem(s)"
        )
        return EXIT_FAILURE if result.problems else EXIT_OK
    customers = asyncio.run(_with_store(config, admin.list_customers))
    if args.json:
        _print_json([asdict(c) for c in customers])
    else:
        for c in map(visible_fields, customers):
            print(f"{c.id:>6}  {c.name}  <{', '.join(c.addresses)}>")
        print(f"{len(customers)} customer(s)")
    return EXIT_OK


def cmd_quarantine(args: argparse.Namespace) -> int:
    from engage_listener.ops import admin, commands  # noqa: PLC0415 - start-up time

    config = _load(args.config)
    if args.action == "replay":
        for line in asyncio.run(commands.replay_quarantine(config, args.ids)):
            print(visible(line))
        return EXIT_OK
    if args.action == "show":
        found = asyncio.run(_with_store(config, lambda s: admin.get_quarantine(s, args.id)))
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
        _with_store(config, lambda s: admin.list_quarantine(s, include_replayed=args.all))
    )
    if args.json:
        _print_json([asdict(e) for e in entries])
        return EXIT_OK
    for e in map(visible_fields, entries):
        print(
            f"{e.id:>5} {e.listener[:12]:<12} {e.state:<8} tries={e.attempts} "
            f"{e.sender} / {e.subject}\n      reason: {e.reason}"
        )
    print(f"{len(entries)} quarantined mail(s)")
    return EXIT_OK


def cmd_store(args: argparse.Namespace) -> int:
    """`store migrate`: open the store (which migrates it, under the store's lock) and say
    so. `store copy --from`: a SQLite store into the PostgreSQL one, verified."""
    config = _load(args.config)
    if args.action == "copy":
        for line in asyncio.run(copy_into(config.store, args.source)):
            print(line)
        print(f"copied into {config.store.where}: verified")
        return EXIT_OK
    asyncio.run(_with_store(config, lambda s: asyncio.sleep(0)))
    print(f"store {config.store.where}: schema up to date")
    return EXIT_OK


COMMANDS = {
    "run": cmd_run,
    "check-config": cmd_check_config,
    "cases": cmd_cases,
    "attachments": cmd_attachments,
    "customers": cmd_customers,
    "quarantine": cmd_quarantine,
    "keygen": cmd_keygen,
    "search": cmd_search,
    "rules": cmd_rules,
    "status": cmd_status,
    "cluster": cmd_cluster,
    "acks": cmd_acks,
    "webhooks": cmd_webhooks,
    "auth": cmd_auth,
    "test-connection": cmd_test_connection,
    "reset": cmd_control,
    "resume": cmd_control,
    "approve": cmd_decide,
    "reject": cmd_decide,
    "encrypt-password": cmd_encrypt_password,
    "store": cmd_store,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except ConfigError as exc:
        return _report_config_error(exc)
    except EngageError as exc:
        print(f"engage-listener: {visible(str(exc))}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
