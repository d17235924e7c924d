"""Issue 7: every operator command prints readable text by default and JSON with `--json`."""

from __future__ import annotations

import pytest

from engage_listener.ops.cli_parser import build_parser

OPERATOR_COMMANDS = [
    ["cases"],
    ["search", "Default"],
    ["test-connection"],
    ["auth", "status"],
    ["customers", "list"],
    ["quarantine", "list"],
    ["status"],
    ["cluster"],
    ["reset", "Default", "--date", "2024-03-10"],
    ["resume", "Default"],
    ["approve", "1"],
    ["reject", "1", "2"],
    ["acks"],
    ["acks", "list"],
    ["acks", "resend", "1"],
    ["acks", "close", "1", "2"],
    ["cases", "list"],
    ["cases", "show", "1"],
    ["cases", "close", "1", "2"],
    ["cases", "close", "--idle-days", "30"],
    ["cases", "reopen", "1"],
    ["attachments", "save", "1", "--to", "out"],
]


@pytest.mark.parametrize("command", OPERATOR_COMMANDS, ids=" ".join)
def test_operator_commands_take_json(command: list[str]) -> None:
    assert build_parser().parse_args(command).json is False
    assert build_parser().parse_args([*command, "--json"]).json is True


def test_cases_options_before_or_after_the_subcommand() -> None:
    for argv in (
        ["cases", "--json", "--config", "x.xml", "show", "3"],
        ["cases", "show", "3", "--json", "--config", "x.xml"],
        ["cases", "--json", "--config", "x.xml", "close", "3", "--reason", "hecho"],
    ):
        args = build_parser().parse_args(argv)
        assert (args.json, str(args.config)) == (True, "x.xml"), argv
    args = build_parser().parse_args(["cases", "--pending"])
    assert (args.action, args.pending, args.json, args.config) == (None, True, False, None)


def test_acks_options_before_or_after_the_subcommand() -> None:
    """argparse lets a subcommand overwrite its parent's values; `acks` must not lose them."""
    for argv in (
        ["acks", "--json", "--config", "x.xml", "list"],
        ["acks", "list", "--json", "--config", "x.xml"],
        ["acks", "--json", "--config", "x.xml", "resend", "3"],
        ["acks", "resend", "3", "--json", "--config", "x.xml"],
    ):
        args = build_parser().parse_args(argv)
        assert (args.json, str(args.config)) == (True, "x.xml"), argv
    args = build_parser().parse_args(["acks", "--state", "failed", "--state", "uncertain"])
    assert (args.action, args.state, args.config) == (None, ["failed", "uncertain"], None)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["acks", "--state", "lost"])
