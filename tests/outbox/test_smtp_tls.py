"""SMTP never sends credentials in clear unless told to: STARTTLS is required under
Security StartTls, and Security None logs in only with AllowPlaintextLogin."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from email.message import EmailMessage

import pytest
from structlog.testing import capture_logs

from engage_listener.cases.ack import AckIdentity, build_ack
from engage_listener.config.templates import DEFAULT_TEMPLATE
from engage_listener.errors import TlsError
from engage_listener.outbox.smtp import SmtpEndpoint, check_smtp, send_message
from tests.support.fixtures import StartRecordingSmtp
from tests.support.servers.hostile_smtp import RecordingSmtp

PASSWORD = "smtp-Secret-0042"
TOKEN = "ya29.smtp-access-token-4242"
NO_STARTTLS = "offered no STARTTLS; refusing to send credentials in clear"


class FixedToken:
    async def token(self, *, force_refresh: bool = False) -> str:
        return TOKEN


def ack() -> EmailMessage:
    return build_ack(
        AckIdentity("soporte@empresa.example", "Soporte"), DEFAULT_TEMPLATE,
        to_address="cliente@example.org", to_name="Cliente", case_number="7",
        original_subject="Pedido", original_message_id="<m1@example.org>",
        original_references=[], customer_name="Cliente",
        received_at=datetime(2024, 5, 2, 9, 30, tzinfo=UTC),
    )  # fmt: skip


def endpoint(server: RecordingSmtp, security: str, **changes: object) -> SmtpEndpoint:
    values: dict[str, object] = {"username": "soporte", "password": PASSWORD, "timeout": 5.0}
    values.update(changes)
    return SmtpEndpoint(server.host, server.port, security, **values)  # type: ignore[arg-type]


def assert_no_secret(received: bytes) -> None:
    assert b"AUTH" not in received.upper()
    for secret in (PASSWORD, TOKEN):
        assert secret.encode() not in received
        assert base64.b64encode(secret.encode())[:12] not in received
    assert b"MAIL FROM" not in received.upper()


@pytest.mark.parametrize("oauth", [False, True], ids=["password", "xoauth2"])
async def test_starttls_required_a_server_without_it_gets_no_credentials(
    recording_smtp: StartRecordingSmtp, oauth: bool
) -> None:
    server = await recording_smtp()
    changes = {"password": None, "token_provider": FixedToken()} if oauth else {}
    ep = endpoint(server, "StartTls", **changes)
    with pytest.raises(TlsError, match=NO_STARTTLS):
        await send_message(ep, ack())
    with pytest.raises(TlsError, match=NO_STARTTLS):  # test-connection's SMTP step
        await check_smtp(ep)
    assert b"EHLO" in server.received
    assert_no_secret(bytes(server.received))
    assert (server.logins, server.messages) == (0, 0)


async def test_a_refused_starttls_is_a_tls_error_before_auth(
    recording_smtp: StartRecordingSmtp,
) -> None:
    server = await recording_smtp(offer_starttls=True)
    with pytest.raises(TlsError, match="refused STARTTLS: 454"):
        await send_message(endpoint(server, "StartTls"), ack())
    assert b"STARTTLS" in server.received
    assert_no_secret(bytes(server.received))


async def test_security_none_with_a_username_is_refused_without_allow_plaintext_login(
    recording_smtp: StartRecordingSmtp,
) -> None:
    server = await recording_smtp()
    for ep in (endpoint(server, "None"), endpoint(server, "None", token_provider=FixedToken())):
        with pytest.raises(TlsError, match="AllowPlaintextLogin"):
            await send_message(ep, ack())
        with pytest.raises(TlsError, match="AllowPlaintextLogin"):
            await check_smtp(ep)
    assert server.received == b""  # refused before connecting: nothing at all was sent


async def test_security_none_with_allow_plaintext_login_logs_in_and_warns(
    recording_smtp: StartRecordingSmtp,
) -> None:
    server = await recording_smtp()
    with capture_logs() as logs:
        reply = await send_message(endpoint(server, "None", allow_plaintext_login=True), ack())
    assert reply.startswith("250") and (server.logins, server.messages) == (1, 1)
    assert b"AUTH PLAIN" in server.received
    assert [e["protocol"] for e in logs if e["event"] == "plaintext_login"] == ["smtp"]


async def test_security_none_without_a_username_needs_no_allowance(
    recording_smtp: StartRecordingSmtp,
) -> None:
    server = await recording_smtp()
    reply = await send_message(endpoint(server, "None", username=None, password=None), ack())
    assert reply.startswith("250") and server.logins == 0
