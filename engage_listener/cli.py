"""Command line: `engage-listener run | check-config | cases`.

Exit codes: 0 success, 2 configuration errors, 1 any other failure. Problems are
printed as plain lines for operators, never as tracebacks.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from . import __version__, app
from .config import Config, describe, load_config
from .errors import ConfigError, EngageError
from .logs import configure_logging

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
    run.add_argument("--once", action="store_true",
                     help="process every enabled listener's backlog once and exit")
    run.add_argument("--log-format", choices=("json", "console"),
                     help="default: json unless stdout is a terminal")
    run.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))

    check = sub.add_parser("check-config", help="validate a configuration file")
    check.add_argument("path", nargs="?", type=Path, help="the XML file (default: --config)")
    _config_arg(check)

    cases = sub.add_parser("cases", help="list cases and their messages from the store")
    _config_arg(cases)
    cases.add_argument("--json", action="store_true", help="one JSON document")
    return root


def _config_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, default=None, metavar="PATH",
                        help="configuration file")


def _load(path: Path | None) -> Config:
    return load_config(path or _default_config())


def _report_config_error(exc: ConfigError) -> int:
    for problem in exc.problems:
        print(problem, file=sys.stderr)
    print(f"{len(exc.problems)} configuration problem(s)", file=sys.stderr)
    return EXIT_CONFIG


def cmd_check_config(args: argparse.Namespace) -> int:
    config = _load(args.path or args.config)
    print(f"{config.path}: OK, {len(config.imap_listeners)} IMAP listener(s), "
          f"store {config.store.path}")
    for listener in config.imap_listeners:
        print(f"  {describe(listener)}")
    for warning in config.warnings():
        print(f"  warning: {warning}")
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    config = _load(args.config)
    json_logs = None if args.log_format is None else args.log_format == "json"
    configure_logging(json=json_logs, level=args.log_level)
    return asyncio.run(app.run(config, once=args.once))


def cmd_cases(args: argparse.Namespace) -> int:
    config = _load(args.config)
    cases = asyncio.run(app.list_cases(config))
    if args.json:
        print(json.dumps([asdict(c) for c in cases], ensure_ascii=False, indent=2))
        return EXIT_OK
    print(f"{'ID':>5} {'CASE':<8} {'LISTENER':<12} {'STATUS':<8} {'INBOX':<10} "
          f"{'MSGS':>4} {'ATT':>4}  SENDER / SUBJECT")
    for c in cases:
        print(f"{c.id:>5} {c.case_number:<8} {c.listener[:12]:<12} {c.status:<8} "
              f"{(c.inbox or '-')[:10]:<10} {c.messages:>4} {c.attachments:>4}  "
              f"{c.sender} / {c.subject}")
    print(f"{len(cases)} case(s)")
    return EXIT_OK


COMMANDS = {"run": cmd_run, "check-config": cmd_check_config, "cases": cmd_cases}


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
