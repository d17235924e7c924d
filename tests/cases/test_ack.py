"""Acknowledgement composing and the rules for (not) sending one."""

from __future__ import annotations

import email
from datetime import UTC, datetime
from email import policy
from email.message import EmailMessage
from typing import Any

import pytest

from engage_listener.cases.ack import (
    MAX_REFERENCES,
    AckIdentity,
    build_ack,
    render,
    skip_reason,
)
from engage_listener.config.templates import (
    DEFAULT_TEMPLATE,
    PLACEHOLDERS,
    AckTemplate,
    template_problems,
)
from engage_listener.mail.automatic import automatic_reason
from engage_listener.mail.fields import recipient_key
from engage_listener.mail.subjects import find_case_token

IDENTITY = AckIdentity("soporte@empresa.example", "Atención al Cliente", "casos@empresa.example")
RECEIVED = datetime(2024, 5, 2, 9, 30, tzinfo=UTC)


def ack(template: AckTemplate = DEFAULT_TEMPLATE, **changes: Any) -> EmailMessage:
    values: dict[str, Any] = {
        "to_address": "cliente@example.org",
        "to_name": "Iñés Cliente",
        "case_number": "123",
        "original_subject": "Factura de señal: 5 €",
        "original_message_id": "<orig-1@example.org>",
        "original_references": ["<root@example.org>", "<mid@example.org>"],
        "customer_name": "Iñés Peña",
        "received_at": RECEIVED,
    }
    values.update(changes)
    return build_ack(IDENTITY, template, **values)


def roundtrip(message: EmailMessage) -> EmailMessage:
    """Serialise as on the wire and parse back, as the customer's client would."""
    wire = message.as_bytes(policy=policy.SMTP)
    assert all(byte < 128 for byte in wire), "the message must be 7-bit clean"
    parsed = email.message_from_bytes(wire, policy=policy.default)
    assert isinstance(parsed, EmailMessage)
    return parsed


def test_headers_follow_rfc_3834_and_thread_into_the_case() -> None:
    msg = roundtrip(ack())
    assert msg["Auto-Submitted"] == "auto-replied"
    assert msg["X-Auto-Response-Suppress"] == "All"
    assert msg["Precedence"] is None
    assert msg["In-Reply-To"] == "<orig-1@example.org>"
    assert msg["References"].split() == [
        "<root@example.org>", "<mid@example.org>", "<orig-1@example.org>",
    ]  # fmt: skip
    assert msg["Message-ID"].endswith("@empresa.example>")
    assert msg["Reply-To"] == "casos@empresa.example"
    assert msg["MIME-Version"] == "1.0"
    assert msg["Date"] is not None
    assert find_case_token(msg["Subject"]) == "123"
    # Our own ack must look automatic to our own (and anybody's) loop protection.
    headers = {k.lower(): str(v) for k, v in msg.items()}
    assert automatic_reason(headers, "soporte@empresa.example") is not None


def test_non_ascii_names_subject_and_body_are_encoded_and_survive() -> None:
    raw = ack().as_bytes(policy=policy.SMTP)
    assert b"=?utf-8?" in raw.lower()  # RFC 2047 encoded words in From/To/Subject
    msg = roundtrip(ack())
    assert msg["From"].addresses[0].display_name == "Atención al Cliente"
    assert msg["From"].addresses[0].addr_spec == "soporte@empresa.example"
    assert msg["To"].addresses[0].display_name == "Iñés Cliente"
    assert "Factura de señal: 5 €" in msg["Subject"]
    body = msg.get_body(("plain",))
    assert body is not None
    assert body.get_content_charset() == "utf-8"
    text = body.get_content()
    assert "Iñés Peña" in text and "Factura de señal: 5 €" in text and "número 123" in text


def test_html_alternative_is_added_and_values_are_escaped() -> None:
    template = AckTemplate(
        subject="Caso {case_number}: {subject}",
        text="Hola {customer_name}, ça va? €",
        html="<p>Hola <b>{customer_name}</b>, caso {case_token}</p>",
    )
    msg = roundtrip(ack(template, customer_name="<script>x</script> Peña"))
    assert msg.get_content_type() == "multipart/alternative"
    plain, html_part = msg.get_body(("plain",)), msg.get_body(("html",))
    assert plain is not None and html_part is not None
    assert "ça va? €" in plain.get_content()
    html_text = html_part.get_content()
    assert "&lt;script&gt;x&lt;/script&gt; Peña" in html_text
    assert "<script>" not in html_text
    assert "[Case#123]" in html_text


def test_case_token_is_prefixed_when_the_template_lacks_it() -> None:
    msg = ack(AckTemplate(subject="Recibido: {subject}", text="ok"))
    assert msg["Subject"].startswith("[Case#123] Recibido: ")


def test_existing_token_in_customer_subject_is_not_repeated() -> None:
    msg = ack(original_subject="RE: [Case#123] Factura")
    assert str(msg["Subject"]).count("[Case#123]") == 1


def test_subject_with_braces_and_line_breaks_is_inserted_verbatim() -> None:
    msg = roundtrip(ack(original_subject="Error {0} en {subject.__class__}\r\nBcc: x@evil"))
    assert "Error {0} en {subject.__class__} Bcc: x@evil" in msg["Subject"]
    assert msg["Bcc"] is None


def test_references_are_capped_keeping_the_first_and_latest() -> None:
    refs = [f"<r{i}@example.org>" for i in range(50)]
    msg = ack(original_references=[" ".join(refs)])
    kept = str(msg["References"]).split()
    assert len(kept) == MAX_REFERENCES
    assert kept[0] == "<r0@example.org>" and kept[-1] == "<orig-1@example.org>"


def test_missing_message_id_means_no_in_reply_to() -> None:
    msg = ack(original_message_id=None, original_references=[])
    assert msg["In-Reply-To"] is None and msg["References"] is None


def test_message_id_domain_can_be_configured() -> None:
    identity = AckIdentity("a@b.example", message_id_domain="mail.example")
    msg = build_ack(identity, DEFAULT_TEMPLATE, to_address="c@d.example", to_name="",
                    case_number="7", original_subject="", original_message_id=None,
                    original_references=[], customer_name="", received_at=RECEIVED)  # fmt: skip
    assert str(msg["Message-ID"]).endswith("@mail.example>")
    assert "(sin asunto / no subject)" in str(msg["Subject"])


def test_unusable_recipient_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        ack(to_address="not an address")


def test_render_non_ascii_template_and_missing_values() -> None:
    template = AckTemplate("Ñandú {case_token} {{literal}}", "Olá {customer_name} — {sender}")
    subject, text, html = render(template, {"case_token": "[Case#9]", "customer_name": "Zoë"})
    assert subject == "Ñandú [Case#9] {literal}"
    assert text == "Olá Zoë — "
    assert html is None


def test_render_never_interprets_values() -> None:
    values = {"subject": "{case_number} {0} {subject.__class__} {{", "case_number": "1"}
    subject, text, _ = render(AckTemplate("{subject}", "{subject}"), values)
    assert subject == text == "{case_number} {0} {subject.__class__} {{"


def test_default_template_has_no_problems() -> None:
    assert template_problems(DEFAULT_TEMPLATE) == []
    assert {"case_number", "subject", "customer_name", "received_at"} <= PLACEHOLDERS


@pytest.mark.parametrize(
    ("template", "fragment"),
    [
        (AckTemplate("{case_numbr}", "x"), "unknown placeholder {case_numbr}"),
        (AckTemplate("{subject.__class__}", "x"), "unknown placeholder"),
        (AckTemplate("{subject[0]}", "x"), "unknown placeholder"),
        (AckTemplate("{}", "x"), "unknown placeholder {}"),
        (AckTemplate("ok", "{subject!r}"), "text: placeholder {subject} must not use !r"),
        (AckTemplate("ok", "x", "<p>{oops</p>"), "html: bad template syntax"),
        (AckTemplate("ok", "a } b"), "text: bad template syntax"),
        (AckTemplate("ok", "{subject:d}"), "text: bad template syntax"),
        (AckTemplate("  ", "x"), "subject: empty"),
    ],
)
def test_template_problems(template: AckTemplate, fragment: str) -> None:
    problems = template_problems(template)
    assert any(fragment in p for p in problems), problems


def skip(**changes: Any) -> str | None:
    values: dict[str, Any] = {
        "sender": "Cliente <cliente@example.org>",
        "automatic": None,
        "own_addresses": ["soporte@empresa.example", "Casos@Empresa.example"],
        "hook_acknowledge": None,
        "is_new_case": True,
        "on_follow_ups": False,
    }
    values.update(changes)
    return skip_reason(**values)


def test_ordinary_new_case_is_acknowledged() -> None:
    assert skip() is None


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"hook_acknowledge": False}, "hook"),
        ({"is_new_case": False}, "follow-up"),
        ({"automatic": "auto-submitted: auto-replied"}, "automatic"),
        ({"sender": ""}, "must not be answered"),
        ({"sender": "<>"}, "must not be answered"),
        ({"sender": "MAILER-DAEMON@mx.example.org"}, "must not be answered"),
        ({"sender": "postmaster@example.org"}, "must not be answered"),
        ({"sender": "no-reply@shop.example"}, "must not be answered"),
        ({"sender": "donotreply@shop.example"}, "must not be answered"),
        ({"sender": "SOPORTE@empresa.example"}, "own addresses"),
        ({"sender": "casos@empresa.example"}, "own addresses"),
        ({"sender": "soporte+loop@Empresa.Example"}, "own addresses"),
        ({"sender": "nobody"}, "must not be answered"),
    ],
)
def test_skip_reasons(changes: dict[str, Any], fragment: str) -> None:
    reason = skip(**changes)
    assert reason is not None and fragment in reason


def test_follow_ups_when_enabled_or_asked_by_the_hook() -> None:
    assert skip(is_new_case=False, on_follow_ups=True) is None
    assert skip(is_new_case=False, hook_acknowledge=True) is None


def test_hook_cannot_override_loop_protection() -> None:
    assert skip(hook_acknowledge=True, automatic="precedence: bulk") is not None
    assert skip(hook_acknowledge=True, sender="soporte@empresa.example") is not None


def test_recipient_key_ignores_case_and_plus_tags() -> None:
    assert recipient_key("Ana <Ana+promo@X.example>") == "ana@x.example"
    assert recipient_key("ana@x.example") == recipient_key("ANA+1@x.example")
    assert recipient_key("otro@x.example") != recipient_key("ana@x.example")
    assert recipient_key("no-at-sign") == "no-at-sign"
