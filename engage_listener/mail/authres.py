"""Whether our own mail server vouched for a mail's sender (RFC 8601 Authentication-Results).

`RequireAuthenticated` acknowledges only mail whose sender domain passed DMARC, as
judged by the receiving server the installation trusts (its AuthServId).

Decisions:

* Only fields whose authserv-id (the text before the first ``;``, comments removed,
  an optional version number after it ignored) equals the configured one count: any
  other server's field is text the sender may have written.
* Of those, only the topmost decides. The trusted server prepends its field when it
  receives the mail, above anything the sender put in; a field lower down that claims
  the same authserv-id is a forgery the server should have removed (RFC 8601 5).
* Comments and quoted strings are blanked before splitting into results, so
  ``reason="x; dmarc=pass"`` or ``(dmarc=pass)`` never counts as a result.
* Anything unreadable is "not authenticated": the mail still gets its case, only no
  acknowledgement.
"""

from __future__ import annotations

import re

from engage_listener.mail.tree import read_fields

_FIELD = "authentication-results"
_RESULT = re.compile(r"^\s*([a-z0-9_.-]+)(?:\s*/\s*\d+)?\s*=\s*([a-z0-9_.-]+)", re.IGNORECASE)
_MAX_FIELDS = 50  # a mail with more of them is not worth reading further


def results_fields(raw: bytes) -> list[str]:
    """The Authentication-Results field values of the mail's header, topmost first."""
    fields, _body = read_fields(raw, 0, len(raw), [], top=True)
    values = [value for name, value in fields if name == _FIELD]
    return [value.decode("utf-8", "replace") for value in values[:_MAX_FIELDS]]


def _blank(value: str) -> str:
    """The value with comments (nested, with quoted-pairs) and quoted strings blanked."""
    out: list[str] = []
    depth, quoted, escaped = 0, False, False
    for char in value:
        if escaped:
            escaped = False
            continue
        if char == "\\" and (depth or quoted):
            escaped = True
        elif quoted:
            quoted = char != '"'
        elif char == "(":
            depth += 1
        elif char == ")" and depth:
            depth -= 1
        elif depth:
            continue
        elif char == '"':
            quoted = True
        else:
            out.append(char)
            continue
        out.append(" ")
    return "".join(out)


def authserv_id(value: str) -> str:
    """The authserv-id of one field value, lower-cased ("" when there is none)."""
    head = _blank(value).split(";", 1)[0].split()
    return head[0].lower() if head else ""


def method_results(value: str) -> dict[str, str]:
    """method -> result (both lower-cased) of one field value; the first of each method."""
    found: dict[str, str] = {}
    for resinfo in _blank(value).split(";")[1:]:
        match = _RESULT.match(resinfo)
        if match:
            found.setdefault(match.group(1).lower(), match.group(2).lower())
    return found


def dmarc_pass(raw: bytes, trusted_id: str) -> bool:
    """Whether the topmost Authentication-Results of `trusted_id` says ``dmarc=pass``."""
    wanted = trusted_id.strip().lower()
    if not wanted:
        return False
    for value in results_fields(raw):
        if authserv_id(value) == wanted:
            return method_results(value).get("dmarc") == "pass"
    return False


def unauthenticated(trusted_id: str | None, raw: bytes) -> str | None:
    """Why RequireAuthenticated withholds the acknowledgement, or None (passed, or not set)."""
    if trusted_id is None or dmarc_pass(raw, trusted_id):
        return None
    return f"not authenticated: no dmarc=pass from {trusted_id} (RequireAuthenticated)"
