"""Subject normalisation and our own case token.

A reply to an open case must be threaded into that case, not opened as a new
one. The SPEC calls two subjects "the same" when they differ only by reply and
forward prefixes in any language (RE:, AW:, 回复: ...), tags added by gateways
(``[EXT]``), our own ``[Case#N]`` token, case, width and spacing. This runs
for every mail, so the prefix regex is compiled once per prefix set.

Decisions:

* A subject made only of prefixes and tags normalises to ``""``. Callers must
  treat ``""`` as "no usable subject" rather than as a subject to match on.
* Any leading bracketed tag of up to 40 characters is dropped (``[EXT]``,
  ``[External Sender]``, ``[list-name]``), so ``[URGENT] Pump`` == ``Pump``.
* The case token is removed wherever it appears, since acknowledgements may
  put it at either end of the subject.
* One-letter prefixes (Italian ``R:``/``I:``) only count when a colon follows
  directly (or after a counter), so ``Is it: x`` is left alone.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from functools import lru_cache

__all__ = ["DEFAULT_PREFIXES", "case_token", "find_case_token", "normalize_subject"]

DEFAULT_PREFIXES: tuple[str, ...] = (
    # English, Spanish, French, Portuguese
    "RE", "RV", "FW", "FWD", "TR", "RES", "ENC",
    # German, Dutch
    "AW", "WG", "ANTWORT", "ANTW", "DOORST",
    # Nordic: Danish/Norwegian/Swedish, Finnish
    "SV", "VS", "VB", "VL",
    # Italian
    "R", "I", "RIF",
    # Polish/Czech, Croatian, Hungarian, Lithuanian, Turkish
    "ODP", "PD", "ODG", "VÁ", "TOV", "ATB", "PRS", "YNT", "ILT", "İLT",
    # Greek
    "ΑΠ", "ΣΧΕΤ", "ΠΡΘ",
    # Chinese (simplified, traditional), Japanese, Korean
    "回复", "答复", "回覆", "转发", "轉寄", "轉發", "返信", "転送", "회신", "답장", "전달",
)  # fmt: skip

_CASE_TOKEN = re.compile(r"\[\s*case\s*#\s*([0-9a-z][0-9a-z-]*)\s*\]", re.IGNORECASE)
_CASE_NUMBER = re.compile(r"[0-9A-Za-z][0-9A-Za-z-]*")
# Zero-width and bidi controls: invisible, but they would defeat string equality.
_INVISIBLE = re.compile("[\u00ad\u200b-\u200f\u202a-\u202e\u2060-\u2064\ufeff]")
_SPACES = re.compile(r"\s+")
_TRAILING_FWD = re.compile(r"\s*\(\s*fwd\s*\)\s*$")
_COUNTER = r"(?:\s*(?:\[\s*\d{1,4}\s*\]|\^\s*\d{1,4}|\(\s*\d{1,4}\s*\)))?"
_TAG = r"\[[^\[\]]{0,40}\]"
_EDGE_CHARS = " :;,.|*~_-\u2013\u2014"


def _fold(text: str) -> str:
    """NFKC + casefold, so full-width, ligature and case variants compare equal."""
    text = _INVISIBLE.sub("", text)
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", text).casefold())


def _canonical_prefixes(extra: Iterable[str]) -> tuple[str, ...]:
    """Fold the configured extras (tolerating a trailing colon) into a stable cache key."""
    folded = {_fold(p).strip().rstrip(":").strip() for p in extra}
    folded.discard("")
    return tuple(sorted(folded))


@lru_cache(maxsize=32)
def _leading_pattern(extra: tuple[str, ...]) -> re.Pattern[str]:
    """One regex eating any run of leading prefixes and tags, longest prefix first."""
    prefixes = {_fold(p) for p in DEFAULT_PREFIXES} | set(extra)
    alternation = "|".join(re.escape(p) for p in sorted(prefixes, key=len, reverse=True))
    one = rf"(?:(?:{alternation}){_COUNTER}\s*[:\uff1a]|{_TAG})\s*"
    return re.compile(rf"^\s*(?:{one})+")


def _strip_once(text: str, leading: re.Pattern[str]) -> str:
    """One pass of every stripping rule; the caller repeats until nothing changes."""
    text = _CASE_TOKEN.sub(" ", text)
    text = _SPACES.sub(" ", text)
    text = leading.sub("", text)
    text = _TRAILING_FWD.sub("", text)
    return text.strip(_EDGE_CHARS)


def normalize_subject(subject: str, extra_prefixes: Iterable[str] = ()) -> str:
    """The comparable core of ``subject``: folded, without prefixes, tags or case token."""
    leading = _leading_pattern(_canonical_prefixes(extra_prefixes))
    text = _fold(subject)
    while True:
        stripped = _strip_once(text, leading)
        if stripped == text:
            return text
        text = stripped


def find_case_token(subject: str) -> str | None:
    """The case number in a ``[Case#N]`` token (any case, spacing or width), else None."""
    match = _CASE_TOKEN.search(unicodedata.normalize("NFKC", subject))
    return match.group(1) if match else None


def case_token(case_number: str) -> str:
    """The token we put in outgoing subjects so replies find their case again.

    Only ASCII letters, digits and inner hyphens are allowed, so that
    :func:`find_case_token` always reads back exactly ``case_number``.
    """
    if not _CASE_NUMBER.fullmatch(case_number):
        raise ValueError(f"case number not usable in a subject token: {case_number!r}")
    return f"[Case#{case_number}]"
