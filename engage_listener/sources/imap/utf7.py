"""IMAP "modified UTF-7" mailbox names (RFC 3501 section 5.1.3).

IMAP4rev1 servers send and expect mailbox names in this encoding, so every
folder name read from configuration must pass through :func:`encode` before it
goes on the wire, and every name from LIST through :func:`decode`.
"""

from __future__ import annotations

import base64
import binascii

__all__ = ["decode", "encode"]


def _is_direct(char: str) -> bool:
    """Printable US-ASCII stands for itself; everything else must be shifted."""
    return "\x20" <= char <= "\x7e"


def _b64(run: str) -> str:
    data = base64.b64encode(run.encode("utf-16-be")).decode("ascii")
    return "&" + data.rstrip("=").replace("/", ",") + "-"


def encode(name: str) -> str:
    """Encode a unicode mailbox name for the wire.

    Raises ValueError (UnicodeEncodeError) for lone surrogates, which UTF-16
    cannot carry.
    """
    out: list[str] = []
    run: list[str] = []
    for char in name:
        if _is_direct(char):
            if run:
                out.append(_b64("".join(run)))
                run.clear()
            out.append("&-" if char == "&" else char)
        else:
            run.append(char)
    if run:
        out.append(_b64("".join(run)))
    return "".join(out)


_B64_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+,")


def _unb64(segment: str, name: str) -> str:
    if not segment or not set(segment) <= _B64_CHARS:
        raise ValueError(f"bad modified base64 {segment!r} in mailbox name {name!r}")
    padded = segment.replace(",", "/") + "=" * (-len(segment) % 4)
    try:
        raw = base64.b64decode(padded, validate=True)
        text = raw.decode("utf-16-be")
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise ValueError(
            f"bad modified base64 {segment!r} in mailbox name {name!r}: {exc}"
        ) from None
    return text


def decode(name: str) -> str:
    """Decode a mailbox name received from the server.

    Strict: rejects anything a conforming server could not have produced
    (raw 8-bit, unterminated shifts, null shifts, shifted printable ASCII,
    non-zero pad bits), because a lenient decode could map two wire names to
    one folder.
    """
    out: list[str] = []
    i = 0
    while i < len(name):
        char = name[i]
        if not _is_direct(char):
            raise ValueError(f"character {char!r} not allowed in mailbox name {name!r}")
        if char != "&":
            out.append(char)
            i += 1
            continue
        end = name.find("-", i + 1)
        if end < 0:
            raise ValueError(f"unterminated '&' shift in mailbox name {name!r}")
        if end == i + 1:
            out.append("&")
        else:
            out.append(_unb64(name[i + 1 : end], name))
        i = end + 1
    text = "".join(out)
    if encode(text) != name:
        # Catches null shifts ("-&"), shifted printable ASCII and non-canonical padding.
        raise ValueError(f"non-canonical modified UTF-7 in mailbox name {name!r}")
    return text
