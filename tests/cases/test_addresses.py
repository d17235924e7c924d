"""Which address is the customer and which gets the acknowledgement (cases.addresses)."""

from __future__ import annotations

import pytest

from engage_listener.cases.addresses import (
    automatic_unless_replied_to,
    chosen_address,
    usable_reply_to,
)
from engage_listener.mail.parser import parse

OWN = ("soporte@example.org",)


def mail(reply_to: str | None, sender: str = "no-reply@forms.example") -> bytes:
    extra = f"Reply-To: {reply_to}\r\n" if reply_to is not None else ""
    return (
        f"From: {sender}\r\nTo: soporte@example.org\r\n{extra}Subject: x\r\n\r\nhola\r\n".encode()
    )


@pytest.mark.parametrize(
    ("reply_to", "expected"),
    [
        ("María <maria@cliente.example>", "maria@cliente.example"),
        ("noreply@forms.example, ana@cliente.example", "ana@cliente.example"),
        ("Soporte+web@Example.org", None),  # one of our own, +tag and case aside
        ("MAILER-DAEMON@forms.example", None),
        ("sin-dominio", None),
        ("", None),
        (None, None),
    ],
)
def test_a_usable_reply_to(reply_to: str | None, expected: str | None) -> None:
    parsed = parse(mail(reply_to))
    found = usable_reply_to(parsed, OWN)
    assert (found.address if found else None) == expected
    chosen = chosen_address(parsed, "ReplyTo", OWN)
    assert chosen is not None and chosen.address == (expected or "no-reply@forms.example")
    assert chosen_address(parsed, "From", OWN) == parsed.sender


def test_only_a_no_reply_from_with_a_used_reply_to_stops_being_automatic() -> None:
    parsed = parse(mail("maria@cliente.example"))
    assert automatic_unless_replied_to("no-reply sender", parsed, True, OWN) is None
    assert automatic_unless_replied_to("no-reply sender", parsed, False, OWN) == "no-reply sender"
    assert automatic_unless_replied_to("auto-submitted", parsed, True, OWN) == "auto-submitted"
    bare = parse(mail(None))
    assert automatic_unless_replied_to("no-reply sender", bare, True, OWN) == "no-reply sender"
