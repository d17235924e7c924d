"""The new text of a reply: what the customer wrote, without history, signature or footer."""

from __future__ import annotations

import pytest

from engage_listener.mail.parser import parse
from engage_listener.mail.reply import new_text
from tests.support.paths import CORPUS


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (  # Gmail, attribution wrapped over two lines
            "Yes, it works now.\n\nOn Thu, Aug 19, 2021 at 2:07 PM Ana Pérez <\n"
            "ana@example.com> wrote:\n\n> Any update?\n>\n",
            "Yes, it works now.",
        ),
        (  # Spanish Gmail
            "Gracias.\n\nEl jue, 3 dic 2026 a las 10:00, Soporte (<s@x.example>) escribió:\n"
            "> Hola\n",
            "Gracias.",
        ),
        (
            "Obrigado!\n\nEm qui., 3 de dez. de 2026 às 10:00, Suporte escreveu:\n> Olá\n",
            "Obrigado!",
        ),
        (
            "Merci.\n\nLe jeu. 3 déc. 2026 à 10:00, Support <s@x.example> a écrit :\n> Bonjour\n",
            "Merci.",
        ),
        (  # Outlook, English
            "Please see attached.\n\n-----Original Message-----\nFrom: Soporte\n"
            "Sent: Monday\nTo: Ana\nSubject: Case\n\nold text\n",
            "Please see attached.",
        ),
        (  # Outlook, Spanish header block, no separator line
            "Adjunto la factura.\n\nDe: Soporte <s@x.example>\nEnviado: lunes, 1 de diciembre\n"
            "Para: Ana <a@x.example>\nAsunto: RE: Caso 42\n\nTexto anterior\n",
            "Adjunto la factura.",
        ),
        (  # Outlook web: a line of underscores, then the block
            "Listo.\n\n________________________________\nFrom: Soporte\nSent: Monday\n"
            "To: Ana\nSubject: Case\n",
            "Listo.",
        ),
        ("See you.\n-- \nAna Pérez\nACME\n", "See you."),
        ("Ok\n\nSent from my iPhone\n\n> earlier\n", "Ok"),
        ("De acuerdo.\n\nEnviado desde mi Samsung Galaxy\n", "De acuerdo."),
        ("Just text, no history.\n", "Just text, no history."),
        (  # answers between quoted lines are new text: nothing is cut but the sign-off
            "> Can you pay?\nYes.\n> When?\nTomorrow.\n",
            "> Can you pay?\nYes.\n> When?\nTomorrow.",
        ),
        (  # a body that only mentions From: is not an Outlook block
            "The letter says\nFrom: the bank\nthat we owe nothing.\n",
            "The letter says\nFrom: the bank\nthat we owe nothing.",
        ),
        ("---------- Forwarded message ---------\nFrom: x\n", ""),  # nothing new: empty
    ],
)
def test_new_text_cuts_history_signature_and_footer(text: str, expected: str) -> None:
    assert new_text(text) == expected


def test_hostile_text_is_handled_without_error() -> None:
    long_line = "On " + "x" * 2_000_000 + " wrote:"
    assert new_text(long_line) == long_line  # too long to be a marker: kept
    many = "From: a\n" * 200_000 + "body"
    assert new_text(many) == many  # From alone, without Sent/To/Subject, is not a block
    mixed = ("On a\n" * 100_000) + "new"
    assert new_text(mixed).endswith("new")


def _corpus_text(name: str) -> str:
    path = CORPUS / name
    if not path.is_file():
        pytest.skip(f"mail corpus not found at {CORPUS} (third-party data, not in the repo)")
    return parse(path.read_bytes()).text


# Checked by hand: the whole text and the cut were read, and the cut is what the sender wrote.
HAND_CHECKED = {
    "chatwoot/mail_with_quote.eml": "Yes, I am providing you step how to reproduce this issue",
    "freescout/1366671050@github.com.eml": "Any updates?",
    "zammad/mail009.box": "Enjoy!\n\n-Martin",
    "zammad/mail057.box": "",  # a forward with nothing added
}


@pytest.mark.parametrize("name", sorted(HAND_CHECKED))
def test_corpus_replies_checked_by_hand(name: str) -> None:
    assert new_text(_corpus_text(name)) == HAND_CHECKED[name]


def test_corpus_outlook_reply_keeps_the_answer_and_drops_the_forwarded_history() -> None:
    text = _corpus_text("zammad/mail082.box")
    cut = new_text(text)
    assert cut.startswith("Goeie dag,") and "ek stuur die korrekte een." in cut
    assert "Subject: FW: Tax Invoice" in text and "Subject:" not in cut
