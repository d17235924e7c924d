"""Mails built to hold a parser: many same-name attachments, thousands of parts, deep
nesting, and one that parses slowly on purpose; and mutations of real mails for fuzzing.

Each builder returns the raw bytes of one mail; the `subject` makes it findable.
"""

from __future__ import annotations

import base64
import random

HEAD = (
    "From: Hostile <hostile@example.com>\r\n"
    "To: soporte@example.org\r\n"
    "Subject: {subject}\r\n"
    "Message-ID: <{subject}@example.com>\r\n"
    "MIME-Version: 1.0\r\n"
)


def _multipart(subject: str, parts: list[bytes], boundary: str = "b0") -> bytes:
    head = (
        HEAD.format(subject=subject) + f'Content-Type: multipart/mixed; boundary="{boundary}"\r\n'
    )
    out = [head.encode(), b"\r\n", b"preamble\r\n"]
    for part in parts:
        out += [f"--{boundary}\r\n".encode(), part, b"\r\n"]
    out.append(f"--{boundary}--\r\n".encode())
    return b"".join(out)


def _attachment(name: str, payload: bytes) -> bytes:
    return (
        "Content-Type: application/octet-stream\r\n"
        f'Content-Disposition: attachment; filename="{name}"\r\n'
        "Content-Transfer-Encoding: base64\r\n\r\n"
    ).encode() + base64.encodebytes(payload).replace(b"\n", b"\r\n")


def same_name_attachments(count: int = 1000, subject: str = "same-name") -> bytes:
    """The mail of issue 14: `count` attachments of one long name (~560 kB at 1,000; a
    wide name, so that each try of a unique name cuts it to 255 UTF-8 bytes again)."""
    name = "報告書" * 40 + ".pdf"
    body = b"Content-Type: text/plain\r\n\r\nSee the attachments.\r\n"
    return _multipart(subject, [body] + [_attachment(name, b"%d" % i) for i in range(count)])


def many_parts(count: int = 5000, subject: str = "many-parts") -> bytes:
    """`count` tiny unnamed parts."""
    part = b"Content-Type: application/octet-stream\r\n\r\nx\r\n"
    return _multipart(subject, [part] * count)


def deep_nesting(depth: int = 2000, subject: str = "deep-nesting") -> bytes:
    """Multiparts nested `depth` deep, a text at the bottom."""
    inner = b"Content-Type: text/plain\r\n\r\nbottom\r\n"
    for level in range(depth, 0, -1):
        inner = (
            f'Content-Type: multipart/mixed; boundary="n{level}"\r\n\r\n--n{level}\r\n'.encode()
            + inner
            + f"\r\n--n{level}--\r\n".encode()
        )
    return HEAD.format(subject=subject).encode() + inner


def slow_mail(megabytes: int = 16, subject: str = "slow-mail") -> bytes:
    """A mail that costs seconds of CPU however well it is parsed: a Subject of
    `megabytes` of RFC 2047 encoded words (folded into 1 kB lines), each decoded on its
    own, and twice (the subject, the header map). Its Message-ID names it."""
    word = b"=?utf-8?q?caf=C3=A9_na=C3=AFve?= "
    line = word * (1000 // len(word))
    lines = megabytes * 1024 * 1024 // (len(line) + 3)
    head = (
        HEAD.format(subject=subject)
        .encode()
        .replace(
            f"Subject: {subject}\r\n".encode(),
            b"Subject: " + b"\r\n ".join([line] * lines) + b"\r\n",
        )
    )
    return head + b"Content-Type: text/plain\r\n\r\nslow\r\n"


def hostile_mails() -> dict[str, bytes]:
    """Every hostile mail but the slow one, by subject."""
    return {
        "same-name": same_name_attachments(),
        "many-parts": many_parts(),
        "deep-nesting": deep_nesting(),
    }


# ----- mutations of real mails ---------------------------------------------------------
def flip_bytes(raw: bytes, rng: random.Random, count: int) -> bytes:
    data = bytearray(raw)
    for _ in range(count if data else 0):
        data[rng.randrange(len(data))] = rng.randrange(256)
    return bytes(data)


def truncate(raw: bytes, rng: random.Random) -> bytes:
    return raw[: rng.randrange(len(raw) + 1)]


def duplicate_headers(raw: bytes, rng: random.Random, times: int) -> bytes:
    end = raw.find(b"\n\n")
    end = raw.find(b"\r\n\r\n") if end < 0 else end
    head = raw[: end if end > 0 else len(raw)]
    lines = head.splitlines(keepends=True)
    if not lines:
        return raw
    picked = lines[rng.randrange(len(lines))]
    return picked * times + raw


def nest_deeply(raw: bytes, depth: int) -> bytes:
    """The mail wrapped as the innermost part of `depth` nested multiparts."""
    inner = raw
    for level in range(depth):
        inner = (
            f'Content-Type: multipart/mixed; boundary="z{level}"\r\n\r\n--z{level}\r\n'.encode()
            + inner
            + f"\r\n--z{level}--\r\n".encode()
        )
    return HEAD.format(subject="nested").encode() + inner


def huge_header_line(raw: bytes, rng: random.Random, size: int) -> bytes:
    name = rng.choice([b"Subject", b"To", b"From", b"References", b"Content-Type", b"X-Long"])
    filler = rng.choice([b"a", b"=?utf-8?q?=C3=A9?= ", b"<x@y> ", b"a@b, ", b'"', b"("])
    return name + b": " + filler * (size // len(filler)) + b"\r\n" + raw
