"""Address helpers of mail.fields: the shortcuts taken for speed give exactly what email's
own parser gives."""

from __future__ import annotations

from email.utils import parseaddr

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engage_listener.mail import fields
from engage_listener.mail.fields import KEY_CACHED_LENGTH, bare_address, recipient_key

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
    "\xa0a@b",
    "a@b\u3000",
    "<\x0ba@b>",
    "<a@b\xa0>",
]
# the characters that decide what parseaddr does: specials, quotes, white space (its own
# and what it takes for text: no-break, vertical tab, ideographic space), letters
ADDRESSISH = st.text(
    alphabet=st.sampled_from(list('ab.+@<>()" ,;:[]\\\t\r\n\xa0\x0b\u3000ü')), max_size=24
)


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
        ("X" * KEY_CACHED_LENGTH + "+tag@Example.org", "x" * KEY_CACHED_LENGTH + "@example.org"),
    ],
)
def test_recipient_key_is_the_same_whether_cached_or_not(value: str, key: str) -> None:
    fields._cached_recipient_key.cache_clear()
    assert recipient_key(value) == key
    assert recipient_key(value) == key  # from the cache


def test_long_addresses_are_not_kept_by_the_cache() -> None:
    """An address from a mail can be ~100 kB: 4,096 of them would pin 800 MB."""
    fields._cached_recipient_key.cache_clear()
    recipient_key("a" * 100_000 + "@example.org")
    recipient_key("short@example.org")
    assert fields._cached_recipient_key.cache_info().currsize == 1
