"""Command line: `engage-listener run | check-config | cases | status | acks | ...`.

Exit codes: 0 success, 2 configuration errors, 1 any other failure. Problems are
printed as plain lines for operators, never as tracebacks.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime as dt
import json
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, TypeVar

from . import __version__, admin, app, commands, diagnose, outbox, secrets
from .config import Config, describe, load_config
from .errors import ConfigError, EngageError
from .logs import configure_logging
from .mailsearch import Criteria
from .mailsearch import render as render_search
from .sqlite_store import SqliteStore

T = TypeVar("T")

EXIT_OK, EXIT_FAILURE, EXIT_CONFIG = 0, 1, 2
DEFAULT_CONFIG = Path("/etc/engage-listener/engage-listener.xml")


def _default_config() -> Path:
    env = os.environ.get("ENGAGE_LISTENER_CONFIG")
    return Path(env) if env else DEFAULT_CONFIG


def _parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(
        prog="engage-listener",
        description="Turns email in IMAP mailboxes into CRM cases, exactly once.",
        epilog="Exit codes: 0 success, 2 configuration errors, 1 other failures. "
        "--config defaults to $ENGAGE_LISTENER_CONFIG, then " + str(DEFAULT_CONFIG) + ".",
    )
    root.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = root.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the daemon")
    _config_arg(run)
    run.add_argument(
        "--once", action="store_true", help="process every enabled listener's backlog once and exit"
    )
    run.add_argument(
        "--log-format",
        choices=("json", "console"),
        help="default: json unless stdout is a terminal",
    )
    run.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))

    check = sub.add_parser("check-config", help="validate a configuration file")
    check.add_argument("path", nargs="?", type=Path, help="the XML file (default: --config)")
    check.add_argument(
        "--show", action="store_true", help="print the effective configuration, secrets masked"
    )
    _config_arg(check)

    keygen = sub.add_parser("keygen", help="create the key file for enc: passwords (mode 0600)")
    keygen.add_argument(
        "--key-file", type=Path, help="default: $CREDENTIALS_DIRECTORY, then the state directory"
    )
    encrypt = sub.add_parser(
        "encrypt-password", help="read a secret from the terminal or stdin, print its enc: form"
    )
    encrypt.add_argument("--key-file", type=Path)

    cases = sub.add_parser("cases", help="list cases and their messages from the store")
    _config_arg(cases)
    cases.add_argument("--json", action="store_true", help="one JSON document")
    cases.add_argument("--pending", action="store_true", help="only cases awaiting approval")
    _add_control_commands(sub)
    _add_search_command(sub)
    _add_auth_command(sub)
    status = sub.add_parser(
        "status",
        help="per listener: state, last batch, today's mails, "
        "backlog, quarantine, pending acknowledgements (from the daemon)",
    )
    status.add_argument("--json", action="store_true", help="a JSON list, one object a listener")
    _config_arg(status)
    _add_acks_command(sub)

    customers = sub.add_parser("customers", help="import or list customers")
    csub = customers.add_subparsers(dest="action", required=True)
    imp = csub.add_parser(
        "import",
        help="create/update customers from CSV: name, addresses"
        "[, external_id]; several addresses separated by ; or spaces",
    )
    imp.add_argument("file", type=Path)
    _config_arg(imp)
    lst = csub.add_parser("list", help="list customers and their addresses")
    _config_arg(lst)
    lst.add_argument("--json", action="store_true")

    quarantine = sub.add_parser("quarantine", help="mail that could not be processed")
    qsub = quarantine.add_subparsers(dest="action", required=True)
    qlist = qsub.add_parser("list", help="held mails with their reasons")
    qlist.add_argument("--all", action="store_true", help="replayed ones too")
    qlist.add_argument("--json", action="store_true")
    _config_arg(qlist)
    show = qsub.add_parser("show", help="one entry; --raw prints the mail itself")
    show.add_argument("id", type=int)
    show.add_argument("--raw", action="store_true")
    _config_arg(show)
    replay = qsub.add_parser("replay", help="process held mails again (after fixing the cause)")
    replay.add_argument("ids", type=int, nargs="+")
    _config_arg(replay)
    return root


def _add_control_commands(sub: Any) -> None:
    """reset/resume (dates and pauses) and approve/reject (RequireApproval)."""
    reset = sub.add_parser(
        "reset",
        help="a past date re-reads mail since 00:00 of that day; "
        "a future date pauses intake until then",
    )
    reset.add_argument("listener")
    reset.add_argument("--date", required=True, type=dt.date.fromisoformat, metavar="YYYY-MM-DD")
    reset.add_argument("--json", action="store_true")
    _config_arg(reset)
    resume = sub.add_parser("resume", help="end a pause set by reset --date")
    resume.add_argument("listener")
    resume.add_argument("--json", action="store_true")
    _config_arg(resume)
    for name, text in (("approve", "open, route and acknowledge"), ("reject", "turn down")):
        decide = sub.add_parser(name, help=f"{text} cases awaiting approval (RequireApproval)")
        decide.add_argument("cases", type=int, nargs="+", metavar="CASE_ID")
        decide.add_argument("--json", action="store_true")
        _config_arg(decide)


def _add_acks_command(sub: Any) -> None:
    """acks [list] / acks resend ID... / acks close ID... (the acknowledgement outbox)."""
    acks = sub.add_parser(
        "acks",
        help="acknowledgements not sent (uncertain, failed, pending...); resend or close them",
    )
    _acks_list_args(acks, suppress=False)  # a plain `acks` lists
    asub = acks.add_subparsers(dest="action", metavar="{list,resend,close}")
    _acks_list_args(asub.add_parser("list", help="the default: list acknowledgements"))
    for name, text in (
        ("resend", "put uncertain, failed or closed ones back to pending, due now"),
        ("close", "mark uncertain or failed ones closed: never to be sent"),
    ):
        change = asub.add_parser(name, help=text)
        change.add_argument("ids", type=int, nargs="+", metavar="ID")
        change.add_argument("--json", action="store_true", default=argparse.SUPPRESS)
        _config_arg(change, default=argparse.SUPPRESS)


def _acks_list_args(parser: argparse.ArgumentParser, *, suppress: bool = True) -> None:
    """Options given before a subcommand (`acks --json list`) must survive it: argparse
    copies every value a subcommand's parser holds, defaults too, so those are SUPPRESS."""
    unset = argparse.SUPPRESS if suppress else None
    parser.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS if suppress else False
    )
    parser.add_argument(
        "--state",
        action="append",
        choices=(*outbox.STATES, "all"),
        default=unset,
        help="only rows in this state (repeatable; all: every row); default: all but sent",
    )
    _config_arg(parser, default=unset)


def _add_search_command(sub: Any) -> None:
    """search (the mailbox on the server) and test-connection (every account)."""
    find = sub.add_parser("search", help="search a listener's mailbox on the server")
    find.add_argument("listener")
    find.add_argument("--folder", help="default: the listener's input folder")
    find.add_argument("--from", dest="sender")
    find.add_argument("--subject")
    find.add_argument("--since", type=dt.date.fromisoformat, metavar="YYYY-MM-DD")
    find.add_argument("--before", type=dt.date.fromisoformat, metavar="YYYY-MM-DD")
    find.add_argument("--limit", type=int, default=50)
    find.add_argument("--json", action="store_true")
    _config_arg(find)
    test = sub.add_parser("test-connection", help="check accounts, TLS, login, folders, SMTP")
    test.add_argument("listeners", nargs="*", metavar="LISTENER", help="default: all")
    test.add_argument("--create-folders", action="store_true", help="create missing folders")
    test.add_argument("--send-to", metavar="ADDRESS", help="also send a test message via SMTP")
    test.add_argument("--json", action="store_true")
    _config_arg(test)


def _add_auth_command(sub: Any) -> None:
    """auth login / auth status (OAuth2 accounts)."""
    auth = sub.add_parser("auth", help="OAuth2 accounts: one-time sign-in and their state")
    asub = auth.add_subparsers(dest="action", required=True)
    login = asub.add_parser("login", help="device code (Microsoft) or consent URL (Google)")
    login.add_argument("listener")
    _config_arg(login)
    astatus = asub.add_parser("status", help="kind, expiry and last refresh; never a secret")
    astatus.add_argument("--json", action="store_true")
    _config_arg(astatus)


def _config_arg(parser: argparse.ArgumentParser, default: Any = None) -> None:
    parser.add_argument(
        "--config", type=Path, default=default, metavar="PATH", help="configuration file"
    )


def _print_json(value: Any) -> None:
    print(json.dumps(value, ensure_ascii=False, indent=2))


def _load(path: Path | None) -> Config:
    return load_config(path or _default_config())


def _report_config_error(exc: ConfigError) -> int:
    for problem in exc.problems:
        print(problem, file=sys.stderr)
    print(f"{len(exc.problems)} configuration problem(s)", file=sys.stderr)
    return EXIT_CONFIG


def cmd_check_config(args: argparse.Namespace) -> int:
    config = _load(args.path or args.config)
    app.load_hooks(config)
    print(
        f"{config.path}: OK, {len(config.imap_listeners)} IMAP and "
        f"{len(config.pop3_listeners)} POP3 listener(s), "
        f"store {config.store.path}"
    )
    for listener in config.listeners:
        print(f"  {describe(listener)}")
    for warning in config.warnings():
        print(f"  warning: {warning}")
    if args.show:
        _show(config)
    return EXIT_OK


def cmd_decide(args: argparse.Namespace) -> int:
    config = _load(args.config)
    decisions = asyncio.run(
        commands.decide_cases(config, args.cases, approve=args.command == "approve")
    )
    if args.json:
        _print_json([asdict(d) for d in decisions])
    else:
        for decision in decisions:
            print(decision.text)
    return EXIT_OK if all(d.done for d in decisions) else EXIT_FAILURE


def cmd_control(args: argparse.Namespace) -> int:
    config = _load(args.config)
    day = args.date if args.command == "reset" else None
    result = asyncio.run(commands.control_listener(config, args.listener, day))
    if args.json:
        _print_json(asdict(result))
    else:
        print(result.message)
    return EXIT_OK


def cmd_search(args: argparse.Namespace) -> int:
    config = _load(args.config)
    cfg = {c.id: c for c in config.listeners}.get(args.listener)
    folder = args.folder or (cfg.input_folder if cfg else "INBOX")
    criteria = Criteria(folder, args.sender, args.subject, args.since, args.before, args.limit)
    hits = asyncio.run(commands.search(config, args.listener, criteria))
    print(
        json.dumps([asdict(h) for h in hits], ensure_ascii=False, indent=2)
        if args.json
        else render_search(hits)
    )
    return EXIT_OK


def cmd_test_connection(args: argparse.Namespace) -> int:
    config = _load(args.config)
    steps = asyncio.run(
        commands.test_connections(
            config, args.listeners, create_folders=args.create_folders, send_to=args.send_to
        )
    )
    print(diagnose.render_json(steps) if args.json else diagnose.render_text(steps))
    return EXIT_OK if diagnose.succeeded(steps) else EXIT_FAILURE


def cmd_auth(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if args.action == "login":
        return asyncio.run(commands.auth_login(config, args.listener, sys.stdout, sys.stdin))
    rows = commands.auth_statuses(config)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for row in rows:
            print("  ".join(f"{k}={v}" for k, v in row.items()))
        print(f"{len(rows)} OAuth2 account(s)")
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if not args.json:
        print(asyncio.run(commands.status(config)), end="")
        return EXIT_OK
    kinds = {c.id: c.protocol for c in config.listeners}
    rows = asyncio.run(commands.status_rows(config))
    _print_json([{"listener": r.listener, "kind": kinds[r.listener], **asdict(r)} for r in rows])
    return EXIT_OK


def cmd_acks(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if args.action in ("resend", "close"):
        change = admin.resend_acks if args.action == "resend" else admin.close_acks
        changes = asyncio.run(_with_store(config, lambda s: change(s, args.ids)))
        if args.json:
            _print_json([asdict(c) for c in changes])
        else:
            for c in changes:
                print(c.text)
        return EXIT_OK if all(c.done for c in changes) else EXIT_FAILURE
    states = list(outbox.STATES) if args.state and "all" in args.state else args.state
    rows = asyncio.run(_with_store(config, lambda s: admin.list_acks(s, states)))
    if args.json:
        _print_json([asdict(r) for r in rows])
        return EXIT_OK
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
    config = _load(args.config)
    cases = asyncio.run(commands.list_cases(config))
    if args.pending:
        cases = [c for c in cases if c.status == "pending-approval"]
    if args.json:
        print(json.dumps([asdict(c) for c in cases], ensure_ascii=False, indent=2))
        return EXIT_OK
    print(
        f"{'ID':>5} {'CASE':<8} {'LISTENER':<12} {'STATUS':<16} {'INBOX':<12} "
        f"{'MSGS':>4} {'ATT':>4}  SENDER / SUBJECT"
    )
    for c in cases:
        print(
            f"{c.id:>5} {c.case_number:<8} {c.listener[:12]:<12} {c.status:<16} "
            f"{(c.inbox or '-')[:12]:<12} {c.messages:>4} {c.attachments:>4}  "
            f"{c.sender} / {c.subject}" + (f"  [ack {c.ack}]" if c.ack else "")
        )
    print(f"{len(cases)} case(s)")
    return EXIT_OK


async def _with_store(config: Config, work: Callable[[SqliteStore], Awaitable[T]]) -> T:
    store = SqliteStore(config.store.path)
    await store.open()
    try:
        return await work(store)
    finally:
        await store.close()


def cmd_customers(args: argparse.Namespace) -> int:
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
        print(json.dumps([asdict(c) for c in customers], ensure_ascii=False, indent=2))
    else:
        for c in customers:
            print(f"{c.id:>6}  {c.name}  <{', '.join(c.addresses)}>")
        print(f"{len(customers)} customer(s)")
    return EXIT_OK


def cmd_quarantine(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if args.action == "replay":
        for line in asyncio.run(commands.replay_quarantine(config, args.ids)):
            print(line)
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
                print(f"{key:>11}: {value}")
        return EXIT_OK
    entries = asyncio.run(
        _with_store(config, lambda s: admin.list_quarantine(s, include_replayed=args.all))
    )
    if args.json:
        print(json.dumps([asdict(e) for e in entries], ensure_ascii=False, indent=2))
        return EXIT_OK
    for e in entries:
        print(
            f"{e.id:>5} {e.listener[:12]:<12} {e.state:<8} tries={e.attempts} "
            f"{e.sender} / {e.subject}\n      reason: {e.reason}"
        )
    print(f"{len(entries)} quarantined mail(s)")
    return EXIT_OK


COMMANDS = {
    "run": cmd_run,
    "check-config": cmd_check_config,
    "cases": cmd_cases,
    "customers": cmd_customers,
    "quarantine": cmd_quarantine,
    "keygen": cmd_keygen,
    "search": cmd_search,
    "status": cmd_status,
    "acks": cmd_acks,
    "auth": cmd_auth,
    "test-connection": cmd_test_connection,
    "reset": cmd_control,
    "resume": cmd_control,
    "approve": cmd_decide,
    "reject": cmd_decide,
    "encrypt-password": cmd_encrypt_password,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except ConfigError as exc:
        return _report_config_error(exc)
    except EngageError as exc:
        print(f"engage-listener: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
