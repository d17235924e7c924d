"""Sending acknowledgements to a real aiosmtpd on loopback (no SMTP mocks)."""

from __future__ import annotations

import asyncio
import socket
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path

import pytest

from engage_listener.cases.ack import AckIdentity, build_ack
from engage_listener.config.ack import default_port
from engage_listener.config.templates import DEFAULT_TEMPLATE
from engage_listener.errors import AuthenticationError, TlsError
from engage_listener.observe.protolog import ProtocolLog
from engage_listener.outbox.smtp import (
    SmtpEndpoint,
    SmtpPermanentError,
    SmtpTemporaryError,
    check_smtp,
    send_message,
)
from tests.support.servers.smtp_server import SmtpTestServer

# The `smtp` fixture (tests/support/fixtures.py) in each mode, where a test takes them all.
EVERY_MODE = pytest.mark.parametrize("smtp", ["plain", "starttls", "ssl"], indirect=True)


def make_ack(to: str = "cliente@example.org") -> EmailMessage:
    identity = AckIdentity("soporte@empresa.example", "Atención al Cliente")
    return build_ack(
        identity, DEFAULT_TEMPLATE, to_address=to, to_name="Iñés", case_number="42",
        original_subject="Pedido ñ/ç/€", original_message_id="<m1@example.org>",
        original_references=[], customer_name="Iñés Peña",
        received_at=datetime(2024, 5, 2, 9, 30, tzinfo=UTC),
    )  # fmt: skip


def test_default_ports() -> None:
    assert (default_port("StartTls"), default_port("SSL"), default_port("None")) == (587, 465, 25)
    with pytest.raises(ValueError):
        default_port("TLS")


def test_password_is_not_in_the_endpoint_repr() -> None:
    endpoint = SmtpEndpoint("h", 587, "StartTls", "u", "hunter2")
    assert "hunter2" not in repr(endpoint)


@EVERY_MODE
async def test_send_with_auth_and_verified_tls(smtp: SmtpTestServer, tmp_path: Path) -> None:
    log = ProtocolLog(tmp_path / "smtp.log")
    receipt = await send_message(smtp.endpoint(), make_ack(), protolog=log)
    log.close()
    assert receipt.startswith("250 ") and "queued as TEST0001" in receipt
    [received] = smtp.messages
    assert received.mail_from == "soporte@empresa.example"
    assert received.rcpt_tos == ["cliente@example.org"]
    assert received.login == SmtpTestServer.USER
    assert received.tls == (smtp.mode != "plain")
    msg = received.message
    assert msg["Auto-Submitted"] == "auto-replied"
    assert msg["X-Auto-Response-Suppress"] == "All"
    assert msg["In-Reply-To"] == "<m1@example.org>"
    assert "[Case#42]" in msg["Subject"] and "Pedido ñ/ç/€" in msg["Subject"]
    assert msg["From"].addresses[0].display_name == "Atención al Cliente"
    body = msg.get_body(("plain",))
    assert body is not None and "Pedido ñ/ç/€" in body.get_content()
    text = (tmp_path / "smtp.log").read_text()
    assert "MAIL FROM:<soporte@empresa.example>" in text and SmtpTestServer.PASSWORD not in text


@EVERY_MODE
async def test_check_smtp_connects_without_sending(smtp: SmtpTestServer) -> None:
    notes = await check_smtp(smtp.endpoint())
    assert any("authenticated as" in n for n in notes)
    assert smtp.messages == []


@EVERY_MODE
async def test_wrong_password_is_an_authentication_error(smtp: SmtpTestServer) -> None:
    bad = "wrong-Secret-987"
    with pytest.raises(AuthenticationError) as info:
        await send_message(smtp.endpoint(password=bad), make_ack())
    assert bad not in str(info.value) and SmtpTestServer.PASSWORD not in str(info.value)
    assert "535" in str(info.value)
    assert smtp.messages == []


async def test_451_on_data_is_temporary(smtp: SmtpTestServer) -> None:
    smtp.fail_next_data("451 4.3.0 try later")
    with pytest.raises(SmtpTemporaryError) as info:
        await send_message(smtp.endpoint(), make_ack())
    assert info.value.code == 451 and "try later" in str(info.value)
    assert not info.value.maybe_sent
    # The retry goes through.
    assert (await send_message(smtp.endpoint(), make_ack())).startswith("250")
    assert len(smtp.messages) == 1


async def test_450_on_rcpt_is_temporary(smtp: SmtpTestServer) -> None:
    smtp.fail_next_rcpt("450 4.2.1 mailbox busy")
    with pytest.raises(SmtpTemporaryError) as info:
        await send_message(smtp.endpoint(), make_ack())
    assert info.value.code == 450


async def test_550_on_rcpt_is_permanent_with_reason(smtp: SmtpTestServer) -> None:
    smtp.fail_next_rcpt("550 5.1.1 no such user")
    with pytest.raises(SmtpPermanentError) as info:
        await send_message(smtp.endpoint(), make_ack())
    assert info.value.code == 550
    assert info.value.server_message == "5.1.1 no such user"
    assert smtp.messages == []


async def test_554_on_data_is_permanent(smtp: SmtpTestServer) -> None:
    smtp.fail_next_data("554 5.7.1 rejected as spam")
    with pytest.raises(SmtpPermanentError) as info:
        await send_message(smtp.endpoint(), make_ack())
    assert info.value.code == 554 and "rejected as spam" in info.value.server_message


async def test_connection_refused_is_temporary() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound but not listening: refused
        endpoint = SmtpEndpoint("127.0.0.1", port, "None", timeout=5)
        with pytest.raises(SmtpTemporaryError) as info:
            await send_message(endpoint, make_ack())
    assert info.value.code is None


async def test_silent_server_times_out_as_temporary() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(5)
        writer.close()

    srv = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    try:
        with pytest.raises(SmtpTemporaryError):
            await send_message(SmtpEndpoint("127.0.0.1", port, "None", timeout=0.5), make_ack())
    finally:
        srv.close()


@pytest.mark.parametrize("mode", ["starttls", "ssl"])
async def test_untrusted_certificate_is_a_tls_error(mode: str, tmp_path: Path) -> None:
    with SmtpTestServer(tmp_path, mode) as srv:
        with pytest.raises(TlsError) as info:
            await send_message(srv.endpoint(ca_file=None), make_ack())
        assert srv.messages == []
    assert SmtpTestServer.PASSWORD not in str(info.value)


async def test_missing_ca_file_is_a_tls_error(smtp: SmtpTestServer) -> None:
    with pytest.raises(TlsError, match="CA file"):
        await send_message(smtp.endpoint(ca_file="/nonexistent/ca.pem"), make_ack())
    assert smtp.messages == []


async def test_starttls_required_but_not_offered(tmp_path: Path) -> None:
    with SmtpTestServer(tmp_path, "plain") as srv:
        log = ProtocolLog(tmp_path / "p.log")
        with pytest.raises(TlsError, match="STARTTLS"):
            await send_message(srv.endpoint(security="StartTls"), make_ack(), protolog=log)
        log.close()
        assert srv.messages == []
    text = (tmp_path / "p.log").read_text()
    assert "AUTH as" not in text and "MAIL FROM" not in text


async def test_server_without_auth_is_an_authentication_error(tmp_path: Path) -> None:
    with (
        SmtpTestServer(tmp_path, "starttls", auth=False) as srv,
        pytest.raises(AuthenticationError, match="offers no AUTH"),
    ):
        await send_message(srv.endpoint(username="u", password="p"), make_ack())


async def test_auth_offered_only_over_tls_is_not_used_in_clear(tmp_path: Path) -> None:
    with SmtpTestServer(tmp_path, "starttls") as srv:
        with pytest.raises(AuthenticationError, match="offers no AUTH"):
            await send_message(
                srv.endpoint(security="None", allow_plaintext_login=True), make_ack()
            )
        assert srv.messages == []


async def test_send_without_auth(tmp_path: Path) -> None:
    with SmtpTestServer(tmp_path, "plain", auth=False) as srv:
        receipt = await send_message(srv.endpoint(), make_ack())
        assert receipt.startswith("250")
        assert srv.messages[0].login is None


async def test_lost_reply_after_data_is_flagged_maybe_sent() -> None:
    """The server takes the whole message, then hangs up without a receipt."""

    async def dropper(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 fake ESMTP\r\n")
        while line := await reader.readline():
            if line == b".\r\n":
                break
            verb = line[:4].upper()
            if verb == b"DATA":
                writer.write(b"354 go ahead\r\n")
            elif verb in (b"EHLO", b"MAIL", b"RCPT"):
                writer.write(b"250 ok\r\n")
        writer.close()

    srv = await asyncio.start_server(dropper, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    try:
        with pytest.raises(SmtpTemporaryError) as info:
            await send_message(SmtpEndpoint("127.0.0.1", port, "None", timeout=5), make_ack())
    finally:
        srv.close()
    assert info.value.maybe_sent and info.value.code is None
