"""IMAP modified UTF-7: the examples from RFC 3501 and the ways servers get it wrong."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engage_listener.sources.imap import utf7 as imap_utf7

ROUND_TRIPS = [
    ("", ""),
    ("INBOX", "INBOX"),
    ("Entrée", "Entr&AOk-e"),
    ("&", "&-"),
    ("A&B&&", "A&-B&-&-"),
    ("日本語", "&ZeVnLIqe-"),
    # RFC 3501 section 5.1.3 example, and its "no superfluous shift" rule.
    ("~peter/mail/台北/日本語", "~peter/mail/&U,BTFw-/&ZeVnLIqe-"),
    ("台北日本語", "&U,BTF2XlZyyKng-"),
    ("Entrée clients/Nuevo ñ", "Entr&AOk-e clients/Nuevo &APE-"),
    ("Ação & Reclamação", "A&AOcA4w-o &- Reclama&AOcA4w-o"),
    ("😀", "&2D3eAA-"),  # outside the BMP: a UTF-16 surrogate pair
    ("tab\there", "tab&AAk-here"),  # controls are not printable, so they are shifted
    ("~!\"#$%'()*+,-./:;<=>?@[\\]^_`{|}", "~!\"#$%'()*+,-./:;<=>?@[\\]^_`{|}"),
]


@pytest.mark.parametrize(("text", "wire"), ROUND_TRIPS)
def test_encode(text: str, wire: str) -> None:
    assert imap_utf7.encode(text) == wire


@pytest.mark.parametrize(("text", "wire"), ROUND_TRIPS)
def test_decode(text: str, wire: str) -> None:
    assert imap_utf7.decode(wire) == text


@pytest.mark.parametrize(
    "wire",
    [
        "&",  # unterminated shift
        "&ZeVnLIqe",  # unterminated shift
        "&Jjo!",  # RFC 3501: "!" inside a shift
        "&U,BTFw-&ZeVnLIqe-",  # RFC 3501: superfluous (null) shift
        "&AGE-",  # "a" must not be shifted
        "&ACY-",  # "&" must be written "&-"
        "&AOl-",  # non-zero padding bits
        "&ZQ-",  # odd number of bytes
        "&2D0-",  # lone high surrogate
        "&3gA-",  # lone low surrogate
        "&AOk/-",  # "/" is standard base64, modified uses ","
        "&AOk=-",  # no "=" padding in modified base64
        "Entrée",  # raw 8-bit
        "a\x00b",  # raw control character
        "a\x7fb",  # DEL
    ],
)
def test_decode_rejects_malformed(wire: str) -> None:
    with pytest.raises(ValueError):
        imap_utf7.decode(wire)


def test_encode_rejects_lone_surrogate() -> None:
    with pytest.raises(ValueError):
        imap_utf7.encode("bad\ud800")


@settings(deadline=None)  # CPU-bound and tiny; a loaded CI box must not fail it
@given(st.text(alphabet=st.characters(codec="utf-8")))  # all but lone surrogates
def test_round_trip_any_text(text: str) -> None:
    wire = imap_utf7.encode(text)
    assert all(" " <= ch <= "~" for ch in wire)
    assert imap_utf7.decode(wire) == text
