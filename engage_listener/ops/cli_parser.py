"""The command line's grammar: every command, its arguments and its help text.

Kept apart from `cli` (what each command does) so each stays short.
"""

from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path
from typing import Any

from engage_listener import __version__
from engage_listener.outbox import delivery as outbox
from engage_listener.store.records import WEBHOOK_STATES

DEFAULT_CONFIG = Path("/etc/engage-listener/engage-listener.xml")


def build_parser() -> argparse.ArgumentParser:
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
        "--key-file",
        type=Path,
        help="default: the key already found ($CREDENTIALS_DIRECTORY, /etc/engage-listener, the "
        "state directory), else the state directory",
    )
    encrypt = sub.add_parser(
        "encrypt-password", help="read a secret from the terminal or stdin, print its enc: form"
    )
    encrypt.add_argument("--key-file", type=Path)

    _add_cases_command(sub)
    _add_control_commands(sub)
    _add_search_command(sub)
    _add_auth_command(sub)
    _add_rules_command(sub)
    _add_store_command(sub)
    status = sub.add_parser(
        "status",
        help="per listener: state, last batch, today's mails, "
        "backlog, quarantine, pending acknowledgements (from the daemon)",
    )
    status.add_argument("--json", action="store_true", help="a JSON list, one object a listener")
    _config_arg(status)
    _add_cluster_command(sub)
    _add_acks_command(sub)
    _add_webhooks_command(sub)

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
    _output_args(qlist)
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
    _output_args(reset)
    resume = sub.add_parser("resume", help="end a pause set by reset --date")
    resume.add_argument("listener")
    _output_args(resume)
    for name, text in (("approve", "open, route and acknowledge"), ("reject", "turn down")):
        decide = sub.add_parser(name, help=f"{text} cases awaiting approval (RequireApproval)")
        decide.add_argument("cases", type=int, nargs="+", metavar="CASE_ID")
        _output_args(decide)


def _cases_list_args(parser: argparse.ArgumentParser, *, suppress: bool = True) -> None:
    """`cases [--json] [--pending]` and `cases list ...` (see `_acks_list_args`)."""
    unset = argparse.SUPPRESS if suppress else False
    parser.add_argument("--json", action="store_true", default=unset, help="one JSON document")
    parser.add_argument(
        "--pending", action="store_true", default=unset, help="only cases awaiting approval"
    )
    _config_arg(parser, default=argparse.SUPPRESS if suppress else None)


def _add_cases_command(sub: Any) -> None:
    """cases [list] / show / export / close / reopen, and attachments save."""
    cases = sub.add_parser("cases", help="list, show, export, close and reopen cases")
    _cases_list_args(cases, suppress=False)  # a plain `cases` lists
    csub = cases.add_subparsers(dest="action", metavar="{list,show,export,close,reopen}")
    _cases_list_args(csub.add_parser("list", help="the default: one line a case"))
    show = csub.add_parser("show", help="a case and each of its mails")
    show.add_argument("case_id", type=int, metavar="ID")
    _json_arg(show)
    export = csub.add_parser(
        "export", help="stream cases and their mails for other systems (stdout)"
    )
    export.add_argument("--format", required=True, choices=("jsonl", "csv"))
    export.add_argument(
        "--csv-formulas",
        choices=("quote", "keep"),
        default="quote",
        help="quote (the default): a CSV cell that a spreadsheet would run as a formula"
        " (=, +, -, @ first) gets a leading '; keep: written as stored",
    )
    export.add_argument(
        "--since",
        type=dt.date.fromisoformat,
        metavar="YYYY-MM-DD",
        help="cases changed (new mail, status) since 00:00 UTC of that day",
    )
    export.add_argument("--listener", help="only this listener's cases")
    _config_arg(export, default=argparse.SUPPRESS)
    close = csub.add_parser("close", help="close cases (new mail may reopen them: ReopenDays)")
    close.add_argument("ids", type=int, nargs="*", metavar="ID")
    close.add_argument("--reason", help="why, kept with the case")
    close.add_argument(
        "--idle-days",
        type=_non_negative,
        metavar="N",
        help="close every open case with no mail for N days (instead of IDs)",
    )
    _json_arg(close)
    reopen = csub.add_parser("reopen", help="open closed cases again")
    reopen.add_argument("ids", type=int, nargs="+", metavar="ID")
    _json_arg(reopen)
    attachments = sub.add_parser("attachments", help="a case's attachments")
    asub = attachments.add_subparsers(dest="action", required=True)
    save = asub.add_parser(
        "save", help="write a case's attachments into a directory, under safe names"
    )
    save.add_argument("case_id", type=int, metavar="CASE_ID")
    save.add_argument("--to", required=True, type=Path, metavar="DIR")
    _output_args(save)


def _json_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", default=argparse.SUPPRESS)
    _config_arg(parser, default=argparse.SUPPRESS)


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return value


def _add_cluster_command(sub: Any) -> None:
    """cluster [--json] (several daemons on one PostgreSQL; solo: the one daemon)."""
    cluster = sub.add_parser(
        "cluster",
        help="the daemons sharing the listeners (host, pid, started, last heartbeat, "
        "listeners owned) and each listener's lease",
    )
    cluster.add_argument("--json", action="store_true", help="one JSON document")
    _config_arg(cluster)


def _add_acks_command(sub: Any) -> None:
    """acks [list] / acks resend ID... / acks close ID... (the acknowledgement outbox)."""
    _add_queue_command(
        sub,
        "acks",
        "acknowledgements not sent (uncertain, failed, pending...); resend or close them",
        "the default: list acknowledgements",
        resend="put uncertain, failed or closed ones back to pending, due now",
        close="mark uncertain or failed ones closed: never to be sent",
        states=outbox.STATES,
    )


def _add_webhooks_command(sub: Any) -> None:
    """webhooks [list] / webhooks resend ID... / webhooks close ID... (the CRM's events)."""
    _add_queue_command(
        sub,
        "webhooks",
        "case events for the CRM not delivered (pending, failed...); resend or close them",
        "the default: list events",
        resend="put failed or closed ones back to pending, due now (same event id)",
        close="mark failed or pending ones closed: never to be sent",
        states=WEBHOOK_STATES,
    )


def _add_queue_command(
    sub: Any,
    name: str,
    text: str,
    list_text: str,
    *,
    resend: str,
    close: str,
    states: tuple[str, ...],
) -> None:
    """`NAME [list]`, `NAME resend ID...`, `NAME close ID...`: the shape shared by the two
    queues an operator tends (acks, webhooks). Decisions: a plain `NAME` lists, so the
    list options sit on the command itself too (not suppressed there)."""
    command = sub.add_parser(name, help=text)
    _acks_list_args(command, suppress=False, states=states)
    csub = command.add_subparsers(dest="action", metavar="{list,resend,close}")
    _acks_list_args(csub.add_parser("list", help=list_text), states=states)
    for action, action_text in (("resend", resend), ("close", close)):
        change = csub.add_parser(action, help=action_text)
        change.add_argument("ids", type=int, nargs="+", metavar="ID")
        _json_arg(change)


def _acks_list_args(
    parser: argparse.ArgumentParser,
    *,
    suppress: bool = True,
    states: tuple[str, ...] = outbox.STATES,
) -> None:
    """Options given before a subcommand (`acks --json list`) must survive it: argparse
    copies every value a subcommand's parser holds, defaults too, so those are SUPPRESS."""
    unset = argparse.SUPPRESS if suppress else None
    parser.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS if suppress else False
    )
    parser.add_argument(
        "--state",
        action="append",
        choices=(*states, "all"),
        default=unset,
        help="only rows in this state (repeatable; all: every row); default: all but "
        + ("sent" if states == outbox.STATES else "delivered"),
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
    _output_args(find)
    test = sub.add_parser("test-connection", help="check accounts, TLS, login, folders, SMTP")
    test.add_argument("listeners", nargs="*", metavar="LISTENER", help="default: all")
    test.add_argument("--create-folders", action="store_true", help="create missing folders")
    test.add_argument("--send-to", metavar="ADDRESS", help="also send a test message via SMTP")
    _output_args(test)


def _add_rules_command(sub: Any) -> None:
    """rules test FILE.eml (the listener's Rules on one mail, writing nothing)."""
    rules = sub.add_parser("rules", help="routing rules (Rules in a listener block)")
    rsub = rules.add_subparsers(dest="action", required=True)
    test = rsub.add_parser(
        "test", help="which rules a mail matches and the final decision; writes nothing"
    )
    test.add_argument("file", type=Path, metavar="FILE.eml")
    test.add_argument("--listener", help="default: the first listener with rules")
    _output_args(test)


def _add_auth_command(sub: Any) -> None:
    """auth login / auth status (OAuth2 accounts)."""
    auth = sub.add_parser("auth", help="OAuth2 accounts: one-time sign-in and their state")
    asub = auth.add_subparsers(dest="action", required=True)
    login = asub.add_parser(
        "login", help="print a sign-in address, then paste back where the browser landed"
    )
    login.add_argument("listener")
    login.add_argument(
        "--device-code",
        action="store_true",
        help="Microsoft: sign in with a device code instead (where Conditional Access allows it)",
    )
    _config_arg(login)
    astatus = asub.add_parser("status", help="kind, expiry and last refresh; never a secret")
    _output_args(astatus)


def _add_store_command(sub: Any) -> None:
    """store migrate (both stores), store copy --from (SQLite into PostgreSQL)."""
    store = sub.add_parser("store", help="the case store itself: its schema")
    ssub = store.add_subparsers(dest="action", required=True)
    migrate = ssub.add_parser(
        "migrate", help="create or bring the store's schema up to date (the daemon does at start)"
    )
    _config_arg(migrate)
    copy = ssub.add_parser(
        "copy", help="copy a SQLite store into the configured PostgreSQL store (safe to re-run)"
    )
    copy.add_argument("--from", dest="source", type=Path, required=True, metavar="PATH.sqlite3")
    _config_arg(copy)


def _output_args(parser: argparse.ArgumentParser) -> None:
    """`--json` and `--config`, the options most commands end with."""
    parser.add_argument("--json", action="store_true")
    _config_arg(parser)


def _config_arg(parser: argparse.ArgumentParser, default: Any = None) -> None:
    parser.add_argument(
        "--config", type=Path, default=default, metavar="PATH", help="configuration file"
    )
