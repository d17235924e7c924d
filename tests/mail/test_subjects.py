"""Subject normalisation decides threading into open cases, so every rule is pinned here."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engage_listener.mail.subjects import (
    DEFAULT_PREFIXES,
    case_token,
    find_case_token,
    normalize_subject,
)

# One real-looking subject per prefix, in the language that uses it.
LOCALISED = [
    ("RE", "Your order 4711"),
    ("RV", "Pedido pendiente"),
    ("FW", "Invoice March"),
    ("FWD", "Invoice March"),
    ("TR", "Facture de mars"),
    ("AW", "Ihre Bestellung"),
    ("WG", "Rechnung März"),
    ("ANTWORT", "Ihre Bestellung"),
    ("SV", "Faktura"),
    ("VS", "Lasku"),
    ("VB", "Faktura"),
    ("VL", "Lasku"),
    ("RES", "Pedido"),
    ("ENC", "Fatura"),
    ("R", "Ordine"),
    ("I", "Ordine"),
    ("RIF", "Ordine"),
    ("ANTW", "Offerte"),
    ("DOORST", "Offerte"),
    ("ODP", "Zamówienie"),
    ("PD", "Zamówienie"),
    ("ODG", "Narudžba"),
    ("VÁ", "Megrendelés"),
    ("TOV", "Megrendelés"),
    ("YNT", "Sipariş"),
    ("ILT", "Sipariş"),
    ("İLT", "Sipariş"),
    ("ATB", "Užsakymas"),
    ("PRS", "Užsakymas"),
    ("ΑΠ", "Παραγγελία"),
    ("ΣΧΕΤ", "Παραγγελία"),
    ("ΠΡΘ", "Παραγγελία"),
    ("回复", "订单问题"),
    ("答复", "订单问题"),
    ("回覆", "訂單問題"),
    ("转发", "订单问题"),
    ("轉寄", "訂單問題"),
    ("轉發", "訂單問題"),
    ("返信", "注文について"),
    ("転送", "注文について"),
    ("회신", "주문 문의"),
    ("답장", "주문 문의"),
    ("전달", "주문 문의"),
]


FULL_WIDTH_COLON = "\uff1a"


def wide(text: str) -> str:
    """The full-width (East Asian) form of printable ASCII, as some mailers send it."""
    return "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in text)


def folded(text: str) -> str:
    return unicodedata.normalize("NFKC", text).casefold()


def test_every_default_prefix_has_an_example() -> None:
    assert {p for p, _ in LOCALISED} == set(DEFAULT_PREFIXES)


@pytest.mark.parametrize(("prefix", "body"), LOCALISED)
@pytest.mark.parametrize(
    "form", ["{p}: {b}", "{p}:{b}", "{p} : {b}", "{p}\uff1a{b}", "{p}[2]: {b}"]
)
def test_localised_prefixes_are_stripped(prefix: str, body: str, form: str) -> None:
    subject = form.format(p=prefix, b=body)
    assert normalize_subject(subject) == folded(body)


@pytest.mark.parametrize(("prefix", "body"), LOCALISED)
def test_prefix_case_does_not_matter(prefix: str, body: str) -> None:
    assert normalize_subject(f"{prefix.lower()}: {body}") == folded(body)


@pytest.mark.parametrize(
    "subject",
    ["Re[3]: Hola", "Re^3: Hola", "Re(3): Hola", "RE [12]: Hola", "Re ^ 2 : Hola", "Re( 2 ): Hola"],
)
def test_counted_forms(subject: str) -> None:
    assert normalize_subject(subject) == "hola"


@pytest.mark.parametrize(
    "subject",
    [
        "RE: FW: Re[3]: [EXT] AW: Hola (fwd)",
        "[External] RE: RE:RE: Hola",
        "[EXTERNAL Sender] Fwd: [EXT] Hola",
        "  Re:   Hola  ",
        "RE: - Hola",
        "Hola (fwd) (fwd)",
        "HOLA",
        "hola.",
        "RV: [Case#000123] Re: Hola",
        "Hola [Case#000123]",
        "Re: Hola [ case # 000123 ]",
    ],
)
def test_nested_mixes_tags_and_case_token(subject: str) -> None:
    assert normalize_subject(subject) == "hola"


def test_whitespace_is_collapsed_inside() -> None:
    assert normalize_subject("Re:  Broken\t pump\n  again") == "broken pump again"


def test_full_width_and_compatibility_forms() -> None:
    assert normalize_subject(wide("RE:Hello")) == "hello"
    assert normalize_subject(wide("Fwd:") + " \ufb01le missing") == "file missing"
    assert normalize_subject(f"RE{FULL_WIDTH_COLON} Hello") == "hello"
    assert normalize_subject("Straße") == normalize_subject("STRASSE")


def test_invisible_characters_are_ignored() -> None:
    assert normalize_subject("Re:\u200b Hel\u00adlo\ufeff") == "hello"


@pytest.mark.parametrize(
    ("subject", "expected"),
    [
        ("I: hello", "hello"),
        ("R: hello", "hello"),
        ("Is: hello", "is: hello"),
        ("Is it: x", "is it: x"),
        ("In: stock", "in: stock"),
        ("Rent: due", "rent: due"),
        ("Rev: 2", "rev: 2"),
        ("Area: north", "area: north"),
        ("Question about RE: x", "question about re: x"),
    ],
)
def test_one_letter_and_lookalike_prefixes(subject: str, expected: str) -> None:
    assert normalize_subject(subject) == expected


@pytest.mark.parametrize("subject", ["", "   ", "RE:", "Re: Fw: ", "[EXT]", "[Case#1]", "(fwd)"])
def test_all_prefix_subject_normalises_to_empty(subject: str) -> None:
    assert normalize_subject(subject) == ""


def test_extra_prefixes_extend_the_defaults() -> None:
    assert normalize_subject("Odpowiedź: Hello") == "odpowiedź: hello"
    assert normalize_subject("Odpowiedź: Hello", ["ODPOWIEDŹ"]) == "hello"
    assert normalize_subject("Svar: Re: Hello", ("svar:",)) == "hello"
    assert normalize_subject("AW: Hello", ["", "  "]) == "hello"


def test_extra_prefix_order_does_not_matter() -> None:
    a = normalize_subject("X1: X2: hi", ["X1", "X2"])
    b = normalize_subject("X1: X2: hi", ("X2", "X1"))
    assert a == b == "hi"


def test_extra_prefix_with_regex_characters_is_literal() -> None:
    assert normalize_subject("A.B: hi", ["A.B"]) == "hi"
    assert normalize_subject("AXB: hi", ["A.B"]) == "axb: hi"


@pytest.mark.parametrize(
    ("subject", "number"),
    [
        ("[Case#000123] Broken pump", "000123"),
        ("Re: Broken pump [Case#123]", "123"),
        ("[case#42]", "42"),
        ("[CASE#42]", "42"),
        ("[ case # 123 ]", "123"),
        (wide("[Case#123]"), "123"),
        ("Re: [Case#2024-0007] x", "2024-0007"),
    ],
)
def test_case_token_found(subject: str, number: str) -> None:
    assert find_case_token(subject) == number


@pytest.mark.parametrize(
    "subject",
    ["Broken pump", "Case#123", "[Case 123]", "[Case#]", "[Case#12 3]", "(Case#123)", "[Cases#1]"],
)
def test_case_token_not_found(subject: str) -> None:
    assert find_case_token(subject) is None


def test_case_token_format() -> None:
    assert case_token("000123") == "[Case#000123]"


@pytest.mark.parametrize("bad", ["", "12 3", "-1", "12]", wide("12")])
def test_case_token_rejects_numbers_it_could_not_read_back(bad: str) -> None:
    with pytest.raises(ValueError, match="case number"):
        case_token(bad)


@given(st.from_regex(r"[0-9A-Za-z][0-9A-Za-z-]{0,20}", fullmatch=True), st.text(max_size=30))
def test_case_token_round_trips(number: str, subject: str) -> None:
    assert find_case_token(f"Re: {case_token(number)} {subject}") == number


_PIECES = st.sampled_from(
    [
        *"abcRrEeIiFfWwDd :[]()^#0123456789-.\t",
        FULL_WIDTH_COLON,
        wide("RE"),
        "回复",
        "Ωσ",
        *("Case", "fwd", "\u0301"),
    ]
)
_SUBJECTS = st.lists(_PIECES, max_size=30).map("".join)


@given(_SUBJECTS)
def test_normalisation_is_idempotent(subject: str) -> None:
    once = normalize_subject(subject)
    assert normalize_subject(once) == once


@given(st.text(max_size=40))
def test_normalisation_is_idempotent_on_any_text(subject: str) -> None:
    once = normalize_subject(subject)
    assert normalize_subject(once) == once


@given(_SUBJECTS, st.sampled_from(["Re: ", "FW: ", "AW:", "[EXT] ", "Re[2]: ", "回复\uff1a"]))
def test_adding_a_prefix_keeps_the_subject(subject: str, prefix: str) -> None:
    assert normalize_subject(prefix + subject) == normalize_subject(subject)


@given(_SUBJECTS, st.sampled_from(["000123", "7"]))
def test_adding_the_case_token_keeps_the_subject(subject: str, number: str) -> None:
    token = case_token(number)
    assert normalize_subject(f"{token} {subject}") == normalize_subject(subject)
    assert normalize_subject(f"{subject} {token}") == normalize_subject(subject)
