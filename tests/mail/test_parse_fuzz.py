"""Property: real mails, mutated (flipped bytes, truncation, duplicated headers, deep
nesting, huge header lines), always parse within the budget and never raise.

The corpus is third-party data read in place from ../shared/corpus (never copied here);
without it this test skips. Each example goes through a parse worker process, as every
mail of the daemon does: a parse that raised would come back as an error, one that
overran as a parse-timeout quarantine; both fail the property.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engage_listener.mail import parse_pool
from engage_listener.mail.parse_pool import ParsePool, Prepared
from tests.support.hostile_mail import (
    duplicate_headers,
    flip_bytes,
    huge_header_line,
    nest_deeply,
    truncate,
)
from tests.support.paths import CORPUS

MAIL_SUFFIXES = {".box", ".eml", ".txt", ".elm"}
BUDGET = 5.0  # seconds per mail here (the daemon's default is 10 s plus 1 s per 8 MB)
MUTATIONS = ("flip", "truncate", "duplicate", "nest", "huge-line", "flip+truncate")


def _corpus() -> list[Path]:
    if not CORPUS.is_dir():
        return []
    return sorted(p for p in CORPUS.rglob("*") if p.suffix in MAIL_SUFFIXES and p.is_file())


PATHS = _corpus()


@pytest.fixture(scope="module")
def pool() -> Iterator[ParsePool]:
    if not PATHS:
        pytest.skip(f"corpus folder {CORPUS} is absent (third-party fixtures, not in the repo)")
    workers = ParsePool(workers=2)
    yield workers
    workers.close()


def mutate(raw: bytes, mutation: str, seed: int) -> bytes:
    rng = random.Random(seed)
    if mutation == "flip":
        return flip_bytes(raw, rng, rng.randint(1, 64))
    if mutation == "truncate":
        return truncate(raw, rng)
    if mutation == "duplicate":
        return duplicate_headers(raw, rng, rng.randint(2, 5000))
    if mutation == "nest":
        return nest_deeply(raw, rng.randint(1, 3000))
    if mutation == "huge-line":
        return huge_header_line(raw, rng, rng.randint(1000, 2 * 1024 * 1024))
    return truncate(flip_bytes(raw, rng, rng.randint(1, 16)), rng)


@settings(
    max_examples=150,
    deadline=None,  # the budget below is the deadline that matters
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    index=st.integers(min_value=0, max_value=max(len(PATHS) - 1, 0)),
    mutation=st.sampled_from(MUTATIONS),
    seed=st.integers(min_value=0, max_value=2**32 - 1),
    strip=st.booleans(),
)
def test_mutated_corpus_mails_parse_within_budget_and_never_raise(
    pool: ParsePool,
    monkeypatch: pytest.MonkeyPatch,
    index: int,
    mutation: str,
    seed: int,
    strip: bool,
) -> None:
    monkeypatch.setattr(parse_pool, "PARSE_SECONDS", BUDGET)
    monkeypatch.setattr(parse_pool, "PARSE_BYTES_PER_SECOND", 1 << 40)
    raw = mutate(PATHS[index].read_bytes(), mutation, seed)
    prepared = asyncio.run(pool.prepare(raw, strip))  # a timeout or error would raise here
    assert isinstance(prepared, Prepared)
    mail = prepared.mail
    assert isinstance(mail.subject, str) and isinstance(mail.text, str)
    assert all(not d.startswith("parser failed") for d in mail.defects), mail.defects
    if strip:
        assert mail.stripped is not None
