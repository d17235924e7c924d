"""Address helpers of mail.fields: the shortcuts taken for speed give exactly what email's
own parser gives."""

from __future__ import annotations

from email.utils import parseaddr

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engage_listener.mail.fields import bare_address, recipient_key

SHAPES = [
    "a@b.example",
    " <A@B.example> ",
    "<a@b>",
    "<>",
    "< a@b >",
    "<a@b",
    "a@b>",
    "<<a@b>>",
    '"x y"@z.example',
    "<a@b> (comment)",
    "a(c)@x",
    "a@@b",
    "Ana <ana@example.com>",
    "ana@example.com, otro@example.com",
    "ü@ö.example",
    "<ü@ö.example>",
    "no-at-sign",
    "",
    "   ",
]
# the characters that decide what parseaddr does: specials, quotes, spaces, letters
ADDRESSISH = st.text(alphabet=st.sampled_from(list('ab.+@<>()" ,;:[]\\\tü')), max_size=24)


@pytest.mark.parametrize("value", SHAPES)
def test_bare_address_is_what_parseaddr_finds(value: str) -> None:
    assert bare_address(value) == parseaddr(value)[1]


@given(ADDRESSISH)
def test_bare_address_agrees_with_parseaddr_on_any_text(value: str) -> None:
    assert bare_address(value) == parseaddr(value)[1]


@pytest.mark.parametrize(
    ("value", "key"),
    [
        ("Ana <Ana+promo@X.example>", "ana@x.example"),
        ("<ANA+1@x.example>", "ana@x.example"),
        ("ana@x.example", "ana@x.example"),
        ("no-at-sign", "no-at-sign"),
    ],
)
def test_recipient_key_is_the_same_whether_cached_or_not(value: str, key: str) -> None:
    recipient_key.cache_clear()
    assert recipient_key(value) == key
    assert recipient_key(value) == key  # from the cache
