"""`test-connection` steps against the real Dovecot sandbox and a real aiosmtpd."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from devkit.dovecot import DovecotSandbox, free_port
from engage_listener.config.ack import AckConfig, SmtpConfig
from engage_listener.config.model import ListenerConfig, Secret
from engage_listener.config.templates import DEFAULT_TEMPLATE
from engage_listener.ops import diagnose
from engage_listener.ops.diagnose_steps import Step, render_json, render_text, succeeded
from engage_listener.service.build import endpoint_for
from engage_listener.sources.pop3.session import Pop3Endpoint
from tests.support.config_xml import listener_xml, write_config
from tests.support.helpers import listener_config, make_mail
from tests.support.servers.smtp_server import SmtpTestServer

NEW, DONE, ERROR = "IMAP/New", "IMAP/Done", "IMAP/Error"
IMAP_STEPS = ["dns", "tcp", "tls", "login", "capabilities"]


async def run_imap(cfg: ListenerConfig, **options: Any) -> list[Step]:
    return await diagnose.test_listener(
        cfg, imap_endpoint=endpoint_for(cfg), pop3_endpoint=None, smtp_endpoint=None, **options
    )


def by_name(steps: list[Step]) -> dict[str, Step]:
    return {step.name: step for step in steps}


def ack_config(server: SmtpTestServer) -> AckConfig:
    smtp = SmtpConfig(
        server.host, server.port, "StartTls", server.USER, server.PASSWORD, server.ca_file
    )
    return AckConfig(
        enabled=True,
        smtp=smtp,
        from_address="soporte@example.org",
        from_name="Soporte",
        reply_to=None,
        template=DEFAULT_TEMPLATE,
        on_follow_ups=False,
        max_per_recipient_per_hour=3,
        own_addresses=(),
        source_line=1,
    )


async def test_good_account_passes_every_step(dovecot: DovecotSandbox, mailbox_user: str) -> None:
    dovecot.append_many(mailbox_user, NEW, [make_mail(1), make_mail(2)])
    dovecot.create_folder(mailbox_user, DONE)
    dovecot.create_folder(mailbox_user, ERROR)
    steps = await run_imap(listener_config(dovecot, mailbox_user))
    names = [s.name for s in steps]
    assert names == [*IMAP_STEPS, f"folder:{NEW}", f"folder:{DONE}", f"folder:{ERROR}", "count"]
    assert all(s.ok for s in steps), render_text(steps)
    assert {s.account for s in steps} == {"imap"}
    found = by_name(steps)
    assert "STARTTLS" in found["tls"].detail
    assert found["login"].detail == f"logged in as {mailbox_user} with password"
    assert "IDLE MOVE UIDPLUS" in found["capabilities"].detail
    assert found["count"].detail == f"2 messages in {NEW}"
    assert render_text(steps).splitlines()[-1] == "Test result: OK"
    assert succeeded(steps)


async def test_missing_error_folder_is_only_a_note(
    dovecot: DovecotSandbox, mailbox_user: str
) -> None:
    dovecot.create_folder(mailbox_user, NEW)
    dovecot.create_folder(mailbox_user, DONE)
    steps = await run_imap(listener_config(dovecot, mailbox_user))
    assert all(s.ok for s in steps), render_text(steps)
    assert "missing" in by_name(steps)[f"folder:{ERROR}"].detail
    assert not dovecot.folder_exists(mailbox_user, ERROR)


async def test_wrong_password_fails_login_with_a_hint_and_never_shows_it(
    dovecot: DovecotSandbox, mailbox_user: str
) -> None:
    secret = "not-the-sandbox-password-42"
    cfg = listener_config(dovecot, mailbox_user, password=Secret(secret))
    steps = await run_imap(cfg)
    assert [s.name for s in steps] == ["dns", "tcp", "tls", "login"]
    tls, login = steps[2], steps[3]
    assert tls.ok and "STARTTLS" in tls.detail  # known even though the login failed
    assert not login.ok and "password" in login.hint
    for output in (render_text(steps), render_json(steps)):
        assert secret not in output
    assert render_text(steps).splitlines()[-1] == "Test result: FAILED (1 of 4 steps)"


async def test_missing_output_folder_fails_then_is_created_on_request(
    dovecot: DovecotSandbox, mailbox_user: str
) -> None:
    dovecot.create_folder(mailbox_user, NEW)
    cfg = listener_config(dovecot, mailbox_user)
    steps = await run_imap(cfg)
    done = by_name(steps)[f"folder:{DONE}"]
    assert not done.ok and "--create-folders" in done.hint
    assert by_name(steps)["count"].ok  # the input folder is fine, so it is still counted
    assert not dovecot.folder_exists(mailbox_user, DONE)

    steps = await run_imap(cfg, create_folders=True)
    assert all(s.ok for s in steps), render_text(steps)
    assert by_name(steps)[f"folder:{DONE}"].detail == "output folder created"
    assert by_name(steps)[f"folder:{ERROR}"].detail == "error folder created"
    assert dovecot.folder_exists(mailbox_user, DONE)
    assert dovecot.folder_exists(mailbox_user, ERROR)


async def test_custom_error_folder_and_default_name(
    dovecot: DovecotSandbox, mailbox_user: str
) -> None:
    dovecot.create_folder(mailbox_user, NEW)
    dovecot.create_folder(mailbox_user, DONE)
    steps = await run_imap(listener_config(dovecot, mailbox_user), error_folder_default="Fallos")
    assert "folder:IMAP/Fallos" in by_name(steps)
    cfg = listener_config(dovecot, mailbox_user, error_folder="Cuarentena")
    assert "folder:Cuarentena" in by_name(await run_imap(cfg))


async def test_closed_port_fails_tcp_and_stops(dovecot: DovecotSandbox, mailbox_user: str) -> None:
    steps = await run_imap(listener_config(dovecot, mailbox_user, port=free_port()))
    assert [(s.name, s.ok) for s in steps] == [("dns", True), ("tcp", False)]
    assert "refused" in steps[1].detail and "Port" in steps[1].hint


async def test_unknown_host_fails_dns(dovecot: DovecotSandbox, mailbox_user: str) -> None:
    steps = await run_imap(listener_config(dovecot, mailbox_user, host="no-such-host.invalid"))
    assert [(s.name, s.ok) for s in steps] == [("dns", False)]
    assert "HostName" in steps[0].hint


async def test_untrusted_certificate_fails_tls_with_the_cafile_hint(
    dovecot: DovecotSandbox, mailbox_user: str
) -> None:
    cfg = listener_config(
        dovecot, mailbox_user, port=dovecot.imaps_port, use_ssl=True, ca_file=None
    )
    steps = await run_imap(cfg)
    assert [(s.name, s.ok) for s in steps] == [("dns", True), ("tcp", True), ("tls", False)]
    assert "CaFile" in steps[2].hint


async def test_tls_on_the_plain_port_points_at_usessl_and_port(
    dovecot: DovecotSandbox, mailbox_user: str
) -> None:
    steps = await run_imap(listener_config(dovecot, mailbox_user, use_ssl=True))
    assert not steps[-1].ok and steps[-1].name == "tls"
    assert "993" in steps[-1].hint and "143" in steps[-1].hint


async def test_implicit_tls_with_the_ca_passes(dovecot: DovecotSandbox, mailbox_user: str) -> None:
    dovecot.create_folder(mailbox_user, NEW)
    cfg = listener_config(
        dovecot, mailbox_user, port=dovecot.imaps_port, use_ssl=True, output_folder=None
    )
    steps = await run_imap(cfg)
    assert all(s.ok for s in steps), render_text(steps)
    assert by_name(steps)["tls"].detail.startswith("implicit TLS")


async def test_pop3_account(dovecot: DovecotSandbox, mailbox_user: str) -> None:
    dovecot.append_many(mailbox_user, "INBOX", [make_mail(i) for i in range(3)])
    cfg = listener_config(dovecot, mailbox_user, port=dovecot.pop3_port, protocol="pop3")
    endpoint = Pop3Endpoint(
        cfg.host, cfg.port, cfg.use_ssl, cfg.username, cfg.password.reveal(), str(cfg.ca_file)
    )
    steps = await diagnose.test_listener(
        cfg, imap_endpoint=None, pop3_endpoint=endpoint, smtp_endpoint=None
    )
    assert [s.name for s in steps] == ["dns", "tcp", "tls", "login", "count"]
    assert all(s.ok and s.account == "pop3" for s in steps), render_text(steps)
    assert "STLS" in steps[2].detail
    assert steps[4].detail == "3 messages on the server"
    assert dovecot.count(mailbox_user, "INBOX") == 3  # nothing deleted

    wrong = dataclasses.replace(endpoint, password="pop-wrong-password")
    steps = await diagnose.test_listener(
        cfg, imap_endpoint=None, pop3_endpoint=wrong, smtp_endpoint=None
    )
    assert [(s.name, s.ok) for s in steps][-1] == ("login", False)
    assert "pop-wrong-password" not in render_json(steps)


async def test_smtp_account_is_checked_without_sending(
    dovecot: DovecotSandbox, mailbox_user: str, smtp: SmtpTestServer
) -> None:
    dovecot.create_folder(mailbox_user, NEW)
    dovecot.create_folder(mailbox_user, DONE)
    cfg = listener_config(dovecot, mailbox_user)
    steps = await diagnose.test_listener(
        cfg,
        imap_endpoint=endpoint_for(cfg),
        pop3_endpoint=None,
        smtp_endpoint=smtp.endpoint(),
    )
    smtp_steps = [s for s in steps if s.account == "smtp"]
    assert [s.name for s in smtp_steps] == ["dns", "tcp", "tls", "login"]
    assert all(s.ok for s in steps), render_text(steps)
    assert "STARTTLS" in smtp_steps[2].detail
    assert smtp_steps[3].detail == f"logged in as {smtp.USER} with password"
    assert steps[0].account == "imap"  # the mailbox first, then the SMTP account
    assert smtp.messages == []


async def test_send_to_delivers_exactly_one_test_message(
    dovecot: DovecotSandbox, mailbox_user: str, smtp: SmtpTestServer
) -> None:
    dovecot.create_folder(mailbox_user, NEW)
    dovecot.create_folder(mailbox_user, DONE)
    cfg = listener_config(dovecot, mailbox_user, acknowledgement=ack_config(smtp))
    steps = await diagnose.test_listener(
        cfg,
        imap_endpoint=endpoint_for(cfg),
        pop3_endpoint=None,
        smtp_endpoint=smtp.endpoint(),
        send_to="operador@example.net",
    )
    assert all(s.ok for s in steps), render_text(steps)
    assert steps[-1].name == "send" and "operador@example.net" in steps[-1].detail
    [received] = smtp.messages
    assert received.rcpt_tos == ["operador@example.net"]
    assert received.mail_from == "soporte@example.org"
    assert received.message["Subject"] == "engage-listener test message"
    assert received.tls and received.login == smtp.USER


async def test_smtp_wrong_password_and_missing_account(
    dovecot: DovecotSandbox, mailbox_user: str, smtp: SmtpTestServer
) -> None:
    dovecot.create_folder(mailbox_user, NEW)
    cfg = listener_config(dovecot, mailbox_user, output_folder=None)
    steps = await diagnose.test_listener(
        cfg,
        imap_endpoint=endpoint_for(cfg),
        pop3_endpoint=None,
        smtp_endpoint=smtp.endpoint(password="smtp-wrong-secret"),
        send_to="operador@example.net",
    )
    smtp_steps = [s for s in steps if s.account == "smtp"]
    assert [(s.name, s.ok) for s in smtp_steps][-2:] == [("tls", True), ("login", False)]
    assert "smtp-wrong-secret" not in render_text(steps) + render_json(steps)
    assert smtp.messages == []

    steps = await diagnose.test_listener(
        cfg, imap_endpoint=endpoint_for(cfg), pop3_endpoint=None, smtp_endpoint=None,
        send_to="operador@example.net",
    )  # fmt: skip
    assert (steps[-1].account, steps[-1].name, steps[-1].ok) == ("smtp", "send", False)


async def test_smtp_untrusted_certificate(
    dovecot: DovecotSandbox, mailbox_user: str, smtp: SmtpTestServer
) -> None:
    dovecot.create_folder(mailbox_user, NEW)
    cfg = listener_config(dovecot, mailbox_user, output_folder=None)
    steps = await diagnose.test_listener(
        cfg,
        imap_endpoint=endpoint_for(cfg),
        pop3_endpoint=None,
        smtp_endpoint=smtp.endpoint(ca_file=None),
    )
    assert (steps[-1].account, steps[-1].name, steps[-1].ok) == ("smtp", "tls", False)
    assert "CaFile" in steps[-1].hint


async def test_json_output_parses(dovecot: DovecotSandbox, mailbox_user: str) -> None:
    cfg = listener_config(dovecot, mailbox_user, port=free_port())
    steps = await run_imap(cfg)
    document = json.loads(render_json(steps))
    assert document["result"] == "FAILED" and document["failed"] == 1
    assert [s["name"] for s in document["steps"]] == ["dns", "tcp"]
    assert set(document["steps"][0]) == {"listener", "account", "name", "ok", "detail", "hint"}


def test_text_is_aligned_and_ends_with_the_verdict() -> None:
    steps = [
        Step("Default", "imap", "login", True, "logged in as soporte with password"),
        Step("Ventas", "smtp", "folder:IMAP/Done", False, "no such folder", "create it"),
    ]
    lines = render_text(steps).splitlines()
    assert lines[0] == "Default  imap  login             OK      logged in as soporte with password"
    assert lines[1] == "Ventas   smtp  folder:IMAP/Done  FAILED  no such folder — hint: create it"
    assert lines[-1] == "Test result: FAILED (1 of 2 steps)"
    assert render_text(steps[:1]).splitlines()[-1] == "Test result: OK"
    assert render_text([]) == "Test result: FAILED (nothing tested)"
    assert not succeeded([])


@pytest.mark.dovecot  # starts a Dovecot of its own
async def test_missing_idle_and_move_are_notes_not_failures(tmp_path: Path) -> None:
    with DovecotSandbox(tmp_path / "bare", idle=False, move=False) as bare:
        bare.create_folder("plain", NEW)
        cfg = listener_config(bare, "plain", output_folder=None)
        steps = await run_imap(cfg)
    assert all(s.ok for s in steps), render_text(steps)
    detail = by_name(steps)["capabilities"].detail
    assert "no IDLE: the daemon polls instead" in detail
    assert "no MOVE: COPY + delete is used" in detail


def test_test_connection_command_end_to_end(
    dovecot: DovecotSandbox, mailbox_user: str, tmp_path: Path
) -> None:
    dovecot.create_folder(mailbox_user, "IMAP/New")
    good = listener_xml(dovecot, mailbox_user, "Good")
    bad = listener_xml(dovecot, mailbox_user, "Bad").replace(DovecotSandbox.PASSWORD, "nope-123")
    config = write_config(tmp_path / "el.xml", good, bad)
    run = [sys.executable, "-m", "engage_listener", "test-connection", "--config", str(config)]
    first = subprocess.run([*run, "Good"], capture_output=True, text=True, check=False)
    assert first.returncode == 1 and "IMAP/Done" in first.stdout  # output folder missing
    fixed = subprocess.run(
        [*run, "Good", "--create-folders"], capture_output=True, text=True, check=False
    )
    assert fixed.returncode == 0 and fixed.stdout.rstrip().endswith("Test result: OK")
    both = subprocess.run([*run, "--json"], capture_output=True, text=True, check=False)
    report = json.loads(both.stdout)
    assert both.returncode == 1 and report["result"] == "FAILED"
    failed = [(s["listener"], s["name"]) for s in report["steps"] if not s["ok"]]
    assert failed == [("Bad", "login")]
    assert "nope-123" not in both.stdout + both.stderr
