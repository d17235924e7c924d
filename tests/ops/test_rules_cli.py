"""`engage-listener rules test FILE.eml`: which rules a mail matches and the decision,
as text and JSON, escaped, writing nothing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from engage_listener.ops.cli import main
from tests.support.rules import ISSUE_EXAMPLE

EVIL = "\x1b]0;pwned\x07\x1b[2J"


def write_config(tmp_path: Path, *, rules: str = ISSUE_EXAMPLE, first_rules: str = "") -> Path:
    """Listener Plain (no rules unless first_rules), then listener Billing with `rules`."""
    path = tmp_path / "engage-listener.xml"
    path.write_text(
        "<EngageIntegrationService>\n"
        '<ImapListener ID="Plain"><HostName>h</HostName><UserName>u</UserName>'
        f"<Password>p</Password>{first_rules}</ImapListener>\n"
        '<Pop3Listener ID="Billing"><HostName>h</HostName>'
        "<UserName>facturacion@empresa.example</UserName><Password>p</Password>\n"
        f"{rules}</Pop3Listener>\n"
        "<Store><Path>store.sqlite3</Path></Store>\n"
        "</EngageIntegrationService>\n",
        encoding="utf-8",
    )
    return path


def write_mail(tmp_path: Path, *, spam: bool = False) -> Path:
    """A billing mail that was delivered to the listener's address through a Bcc."""
    path = tmp_path / "mail.eml"
    path.write_bytes(
        (
            "Delivered-To: facturacion@empresa.example\r\n"
            f'From: "Cliente {EVIL}" <cliente\x9b2J@proveedor{EVIL}.example>\r\n'
            "To: otra@proveedor.example\r\n"
            f"Subject: =?utf-8?q?Nota_fiscal_n=C2=BA_7?= {EVIL}\r\n"
            + ("X-Spam-Flag: YES\r\n" if spam else "")
            + "Message-ID: <m1@proveedor.example>\r\n"
            "\r\n"
            "Adjunto la nota fiscal.\r\n"
        ).encode()
    )
    return path


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["rules", "test", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_json_names_the_matched_rules_and_the_decision(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path)
    mail = write_mail(tmp_path, spam=True)
    code, out, _ = run(capsys, str(mail), "--config", str(config), "--json")
    assert code == 0
    report = json.loads(out)
    assert report["listener"] == "Billing"  # the first listener with rules
    assert report["file"] == str(mail)
    assert report["mail"]["delivered_to"] == "facturacion@empresa.example"
    assert report["mail"]["to"] == ["otra@proveedor.example"]  # matched by delivered-to
    assert report["rules"] == [
        {"name": "Facturas", "line": 5, "result": "matched", "failed_match_line": None},
        {"name": "Spam", "line": 10, "result": "matched", "failed_match_line": None},
        {"name": "Banned", "line": 11, "result": "not reached", "failed_match_line": None},
    ]
    assert report["decision"] == {
        "matched": ["Facturas", "Spam"],
        "process": None,
        "inbox": "Facturacion",
        "priority": 2,
        "tags": ["billing"],
        "acknowledge": True,
        "discard": True,
        "quarantine": None,
        "stopped": True,
    }
    assert not any(c in out for c in "\x1b\x07\x9b")
    assert report["mail"]["from"].startswith("cliente\x9b2J@proveedor\x1b")  # escaped in JSON


def test_text_shows_each_rule_and_the_decision_escaped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path)
    code, out, _ = run(capsys, str(write_mail(tmp_path)), "--config", str(config))
    assert code == 0
    assert not any(c in out for c in "\x1b\x07\x9b")
    assert "cliente\\x9b2J@proveedor\\x1b" in out  # made visible, not dropped
    lines = out.splitlines()
    assert "listener Billing: 3 rule(s)" in lines
    rows = [line.split() for line in lines if line.strip().split(" ")[0].isdigit()]
    assert rows == [
        ["5", "matched", "Facturas"],
        ["10", "no", "match", "Spam", "(Match", "on", "line", "10)"],
        ["11", "no", "match", "Banned", "(Match", "on", "line", "11)"],
    ]
    decision = dict(line.split(None, 1) for line in lines[lines.index("decision:") + 1 :])
    assert decision == {
        "matched": "Facturas",
        "process": "-",
        "inbox": "Facturacion",
        "priority": "2",
        "tags": "billing",
        "acknowledge": "yes",
        "discard": "no",
        "quarantine": "-",
        "stopped": "no",
    }


def test_listener_option_picks_another_listener(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    quiet = (
        '<Rules><Rule Name="Todo"><Match Field="From" Exists="true"/><NoAcknowledgement/>'
        "</Rule></Rules>"
    )
    config = write_config(tmp_path, first_rules=quiet)
    mail = str(write_mail(tmp_path))
    code, out, _ = run(capsys, mail, "--config", str(config), "--json")
    assert (code, json.loads(out)["listener"]) == (0, "Plain")  # Plain comes first now
    code, out, _ = run(capsys, mail, "--config", str(config), "--json", "--listener", "Billing")
    assert json.loads(out)["decision"]["matched"] == ["Facturas"]


def test_it_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path)
    mail = write_mail(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    assert run(capsys, str(mail), "--config", str(config))[0] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no store was created


def test_errors_are_plain_lines(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path)
    mail = str(write_mail(tmp_path))
    code, _, err = run(capsys, mail, "--config", str(config), "--listener", "Nope")
    assert code == 1 and "no listener 'Nope'" in err and "Plain, Billing" in err
    code, _, err = run(capsys, str(tmp_path / "missing.eml"), "--config", str(config))
    assert code == 1 and "cannot read" in err
    empty = write_config(tmp_path, rules="")
    code, _, err = run(capsys, mail, "--config", str(empty))
    assert code == 1 and "has Rules; nothing to test" in err


def test_a_bad_rule_is_a_configuration_error_with_file_and_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = (
        '<Rules>\n<Rule Name="X"><Match Field="Subject" Regex="(a)\\1"/><Stop/></Rule>\n</Rules>\n'
    )
    config = write_config(tmp_path, rules=bad)
    code, _, err = run(capsys, str(write_mail(tmp_path)), "--config", str(config))
    assert code == 2
    assert f"{config}:5: Match: regular expression uses something the linear-time" in err
    assert main(["check-config", str(config)]) == 2


def test_the_installed_command_runs(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "engage_listener",
            "rules",
            "test",
            str(write_mail(tmp_path)),
            "--config",
            str(config),
            "--json",
        ],
        capture_output=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["decision"]["inbox"] == "Facturacion"
    assert b"absl" not in done.stderr and done.stderr == b""
