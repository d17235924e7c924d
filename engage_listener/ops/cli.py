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
import sys
from collections.abc import Sequence
from dataclasses import asdict

from engage_listener.config import secret_refs as secrets
from engage_listener.config.cautions import config_warnings
from engage_listener.config.model import Config, describe
from engage_listener.errors import ConfigError, EngageError
from engage_listener.observe.logs import configure_logging
from engage_listener.ops.cli_admin import cmd_acks, cmd_cases, cmd_customers, cmd_quarantine
from engage_listener.ops.cli_common import (
    EXIT_CONFIG,
    EXIT_FAILURE,
    EXIT_OK,
    load,
    print_json,
    report,
    with_store,
)
from engage_listener.ops.cli_parser import build_parser
from engage_listener.ops.terminal import (
    json_text,
    safe_json,
    visible,
    visible_lines,
)
from engage_listener.service import app, build
from engage_listener.store.open import copy_into

# The operator commands' modules (commands, admin, diagnose, mailsearch) are imported by
# the functions that use them, so `run` does not pay for them at start-up.


def _report_config_error(exc: ConfigError) -> int:
    for problem in exc.problems:
        print(visible(str(problem)), file=sys.stderr)
    print(f"{len(exc.problems)} configuration problem(s)", file=sys.stderr)
    return EXIT_CONFIG


def cmd_check_config(args: argparse.Namespace) -> int:
    config = load(args.path or args.config)
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

    config = load(args.config)
    decisions = asyncio.run(
        commands.decide_cases(config, args.cases, approve=args.command == "approve")
    )
    return report(decisions, args.json)


def cmd_control(args: argparse.Namespace) -> int:
    from engage_listener.ops import commands  # noqa: PLC0415 - start-up time

    config = load(args.config)
    day = args.date if args.command == "reset" else None
    result = asyncio.run(commands.control_listener(config, args.listener, day))
    if args.json:
        print_json(asdict(result))
    else:
        print(visible(result.message))
    return EXIT_OK


def cmd_search(args: argparse.Namespace) -> int:
    from engage_listener.ops import commands  # noqa: PLC0415 - start-up time
    from engage_listener.ops.search import Criteria  # noqa: PLC0415
    from engage_listener.ops.search import render as render_search  # noqa: PLC0415

    config = load(args.config)
    cfg = {c.id: c for c in config.listeners}.get(args.listener)
    folder = args.folder or (cfg.input_folder if cfg else "INBOX")
    criteria = Criteria(folder, args.sender, args.subject, args.since, args.before, args.limit)
    hits = asyncio.run(commands.search(config, args.listener, criteria))
    print(json_text([asdict(h) for h in hits]) if args.json else render_search(hits))
    return EXIT_OK


def cmd_rules(args: argparse.Namespace) -> int:
    from engage_listener.ops import rules  # noqa: PLC0415 - start-up time

    config = load(args.config)
    report = rules.run_rules(config, args.file, args.listener)
    print(rules.render_json(report) if args.json else rules.render_text(report))
    return EXIT_OK


def cmd_test_connection(args: argparse.Namespace) -> int:
    from engage_listener.ops import commands, diagnose_steps  # noqa: PLC0415 - start-up time

    config = load(args.config)
    steps = asyncio.run(
        commands.test_connections(
            config, args.listeners, create_folders=args.create_folders, send_to=args.send_to
        )
    )
    text = diagnose_steps.render_json(steps) if args.json else diagnose_steps.render_text(steps)
    print(safe_json(text) if args.json else visible_lines(text))
    return EXIT_OK if diagnose_steps.succeeded(steps) else EXIT_FAILURE


def cmd_auth(args: argparse.Namespace) -> int:
    from engage_listener.ops import commands  # noqa: PLC0415 - start-up time

    config = load(args.config)
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

    config = load(args.config)
    if not args.json:
        print(visible_lines(asyncio.run(commands.status(config))), end="")
        return EXIT_OK
    kinds = {c.id: c.protocol for c in config.listeners}
    rows = asyncio.run(commands.status_rows(config))
    print_json([{"listener": r.listener, "kind": kinds[r.listener], **asdict(r)} for r in rows])
    return EXIT_OK


def cmd_cluster(args: argparse.Namespace) -> int:
    from engage_listener.ops import cluster, commands  # noqa: PLC0415 - start-up time

    view = asyncio.run(commands.cluster_view(load(args.config)))
    if args.json:
        print_json(cluster.as_json(view))
    else:
        print(visible_lines(cluster.render_cluster(view)), end="")
    return EXIT_OK


def cmd_webhooks(args: argparse.Namespace) -> int:
    from engage_listener.ops import webhooks  # noqa: PLC0415 - start-up time

    return webhooks.cmd_webhooks(args, load(args.config))


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
    config = load(args.config)
    json_logs = None if args.log_format is None else args.log_format == "json"
    configure_logging(json=json_logs, level=args.log_level)
    return asyncio.run(app.run(config, once=args.once))


def cmd_attachments(args: argparse.Namespace) -> int:
    from engage_listener.ops import cases_cli  # noqa: PLC0415 - start-up time

    return cases_cli.run_attachments(args, load(args.config))


def cmd_store(args: argparse.Namespace) -> int:
    """`store migrate`: open the store (which migrates it, under the store's lock) and say
    so. `store copy --from`: a SQLite store into the PostgreSQL one, verified."""
    config = load(args.config)
    if args.action == "copy":
        for line in asyncio.run(copy_into(config.store, args.source)):
            print(line)
        print(f"copied into {config.store.where}: verified")
        return EXIT_OK
    asyncio.run(with_store(config, lambda s: asyncio.sleep(0)))
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
