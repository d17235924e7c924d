"""Golden and property tests for the mail parser (engage_listener.mail.parser).

Every message here is hand-made to show one kind of breakage seen in real mail;
the property tests then check that no input at all makes ``parse`` or
``strip_attachments`` raise.
"""

from __future__ import annotations

import base64
import datetime as dt
import unicodedata

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engage_listener.mail import parser
from engage_listener.mail.parser import parse, sanitize_filename, strip_attachments

PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)
PDF = b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n"


def mail(*lines: str | bytes) -> bytes:
    """A raw message from lines (CRLF line ends, like mail on the wire)."""
    return b"\r\n".join(x if isinstance(x, bytes) else x.encode("utf-8") for x in lines)


def b64(data: bytes) -> str:
    return base64.encodebytes(data).decode("ascii").rstrip("\n")


def simple(
    subject: str | bytes = "Hello",
    *,
    body: str | bytes = "Body",
    extra: tuple[str | bytes, ...] = (),
    ctype: str = "text/plain; charset=utf-8",
) -> bytes:
    subject_line = subject if isinstance(subject, bytes) else subject.encode("utf-8")
    return mail(
        "From: Jane Doe <jane@example.com>",
        "To: support@example.com",
        b"Subject: " + subject_line,
        *extra,
        "MIME-Version: 1.0",
        f"Content-Type: {ctype}",
        "",
        body,
    )


def mixed(*parts: str, boundary: str = "XyZ", top: tuple[str, ...] = ()) -> bytes:
    """multipart/mixed built from already formatted parts (headers, blank line, body)."""
    lines: list[str] = [
        "From: jane@example.com",
        "Subject: parts",
        *top,
        "MIME-Version: 1.0",
        f'Content-Type: multipart/mixed; boundary="{boundary}"',
        "",
        "preamble",
    ]
    for part in parts:
        lines += [f"--{boundary}", part]
    lines.append(f"--{boundary}--")
    return mail(*lines)


def attachment_part(name: str, data: bytes = PDF, ctype: str = "application/pdf") -> str:
    return (
        f'Content-Type: {ctype}; name="{name}"\r\n'
        f'Content-Disposition: attachment; filename="{name}"\r\n'
        f"Content-Transfer-Encoding: base64\r\n\r\n{b64(data)}"
    )


TEXT_PART = "Content-Type: text/plain; charset=utf-8\r\n\r\nSee attached."


# ----- headers, addresses, dates ------------------------------------------------------
def test_plain_mail_fields() -> None:
    raw = mail(
        'From: "Doe, Jane" <Jane.Doe@Example.COM>',
        "To: a@example.com, B <b@example.com>",
        "Cc: c@example.com",
        "Reply-To: replies@example.com",
        "Subject: Order 42",
        "Date: Mon, 3 Dec 2012 13:39:23 +0100",
        "Message-ID: <abc@mail.example.com>",
        "In-Reply-To: <prev@example.com>",
        "References: <one@x> <two@x>\r\n <three@x>",
        "X-Autoreply: yes",
        "",
        "Line 1\r\nLine 2\r\n",
    )
    got = parse(raw)
    assert got.parsed and got.defects == ()
    assert got.sender == parser.Address("Jane.Doe@Example.COM", "Doe, Jane")
    assert got.sender.normalized == "jane.doe@example.com"
    assert [a.address for a in got.to] == ["a@example.com", "b@example.com"]
    assert got.to[1].name == "B"
    assert [a.address for a in got.cc] == ["c@example.com"]
    assert [a.address for a in got.reply_to] == ["replies@example.com"]
    assert got.subject == "Order 42"
    assert got.date == dt.datetime(2012, 12, 3, 12, 39, 23, tzinfo=dt.UTC)
    assert got.message_id == "abc@mail.example.com"
    assert got.in_reply_to == "prev@example.com"
    assert got.references == ("one@x", "two@x", "three@x")
    assert got.text == "Line 1\nLine 2\n"
    assert got.html is None and got.attachments == ()
    assert got.headers["x-autoreply"] == "yes" and got.headers["subject"] == "Order 42"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("=?utf-8?B?w6TDtsO8?=", "äöü"),
        ("=?iso-8859-1?Q?Gr=FC=DFe_aus_K=F6ln?=", "Grüße aus Köln"),
        ("=?utf-8?Q?a?= =?utf-8?Q?b?=", "ab"),  # whitespace between encoded words is dropped
        ("=?utf-8?B?ww==?=\r\n =?utf-8?B?pA==?=", "ä"),  # one character split over two words
        ("Re: =?utf-8?Q?caf=C3=A9?= menu", "Re: café menu"),
        ("=?ISO-2022-JP?B?GyRCJUYlOSVIGyhC?=", "テスト"),
        ("=?windows-1252?Q?=93quoted=94?=", "\u201cquoted\u201d"),
        ("=?utf-8?B?w6TDtsO?=", "äö\ufffd"),  # bad base64 and a cut character: lenient
        ("=?UTF-8?q?tab=09and=0D=0Anewline?=", "tab and newline"),
        ("no =?encoded word", "no =?encoded word"),
    ],
)
def test_encoded_word_subjects(value: str, expected: str) -> None:
    assert parse(simple(value)).subject == expected


def test_unknown_charset_in_encoded_word_falls_back_with_defect() -> None:
    got = parse(simple("=?x-no-such-charset?Q?caf=C3=A9?="))
    assert got.subject == "café"
    assert any("x-no-such-charset" in d for d in got.defects)


@pytest.mark.parametrize(
    "from_",
    [
        '"=?utf-8?Q?M=C3=BCller,_Hans?=" <hans@example.com>',
        "=?utf-8?Q?M=C3=BCller,_Hans?= <hans@example.com>",  # unquoted, with a comma inside
    ],
)
def test_encoded_display_names(from_: str) -> None:
    got = parse(simple(extra=(), body="x").replace(b"Jane Doe <jane@example.com>", from_.encode()))
    assert got.sender == parser.Address("hans@example.com", "Müller, Hans")


def test_raw_8bit_headers_utf8_latin1_and_declared_charset() -> None:
    assert parse(simple("Grüße".encode())).subject == "Grüße"
    assert parse(simple("Grüße".encode("latin-1"))).subject == "Grüße"
    chinese = parse(
        simple("绩效管理".encode("gb2312"), body="x", ctype="text/plain; charset=gb2312")
    )
    assert chinese.subject == "绩效管理"


def test_sender_fallbacks() -> None:
    def sender(*fields: str) -> parser.Address | None:
        return parse(mail(*fields, "Subject: s", "", "body")).sender

    def address(*fields: str) -> str | None:
        found = sender(*fields)
        return found.address if found else None

    assert sender("Sender: s@example.com") == parser.Address("s@example.com", "")
    assert sender(
        'From: "Broken" <>', "Reply-To: r@example.com", "Return-Path: <bounce@example.com>"
    ) == parser.Address("r@example.com", "Broken")
    assert address("From: nobody", "Return-Path: <rp@example.com>") == "rp@example.com"
    assert sender("From: MAILER-DAEMON (Mail Delivery System)") == parser.Address(
        "", "Mail Delivery System"
    )
    assert sender("To: x@example.com") is None
    assert address("From: [??]", "From: Real <real@example.com>") == "real@example.com"


def test_unusable_addresses_are_not_guessed() -> None:
    got = parse(mail('From: "x" <power user@example.com>', "", "b"))
    assert got.sender is not None and got.sender.address == ""
    bare = parse(mail("From: Test test@example.com", "", "b")).sender
    assert bare is not None and bare.address == "test@example.com"
    encoded = parse(mail("From: =?utf-8?Q?agent?=@example.com", "", "b")).sender
    assert encoded is not None and encoded.address == "=?utf-8?Q?agent?=@example.com"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (
            "Mon, 3 Dec 2012 13:39:23 +0100 (CET)",
            dt.datetime(2012, 12, 3, 13, 39, 23, tzinfo=dt.timezone(dt.timedelta(hours=1))),
        ),
        ("3 Dec 2012 13:39:23 -0000", dt.datetime(2012, 12, 3, 13, 39, 23, tzinfo=dt.UTC)),
        ("yesterday", None),
        ("Mon, 3 Dec 99999 13:39:23 +0100", None),
        ("", None),
    ],
)
def test_dates_are_aware_or_none(value: str, expected: dt.datetime | None) -> None:
    got = parse(simple(extra=(f"Date: {value}",))).date
    assert got == expected
    assert got is None or got.tzinfo is not None


def test_message_ids_without_brackets_and_garbage() -> None:
    got = parse(
        simple(
            extra=(
                "Message-ID: plain-id@example.com",
                "In-Reply-To: junk <a@b> x",
                "References: r1@x r2@x",
            )
        )
    )
    assert (got.message_id, got.in_reply_to, got.references) == (
        "plain-id@example.com",
        "a@b",
        ("r1@x", "r2@x"),
    )


def test_headers_map_first_value_decoded() -> None:
    got = parse(
        simple(
            extra=(
                "Auto-Submitted: auto-replied",
                "X-Note: =?utf-8?Q?=C3=A9?=",
                "X-Note: second",
                "PRECEDENCE: bulk",
            )
        )
    )
    assert got.headers["auto-submitted"] == "auto-replied"
    assert got.headers["x-note"] == "é" and got.headers["precedence"] == "bulk"
    assert got.headers["content-type"] == "text/plain; charset=utf-8"


def test_huge_header_line_and_many_folds() -> None:
    long_subject = "x" * 2_000_000
    folded = "\r\n ".join(["word"] * 50_000)
    got = parse(simple(long_subject, extra=(f"X-Folded: {folded}",)))
    assert got.subject == long_subject
    assert got.headers["x-folded"].count("word") == 50_000


def test_nul_bytes_are_removed() -> None:
    got = parse(simple(b"Hel\x00lo", body="Bo\x00dy\x07 text"))
    assert got.subject == "Hello" and got.text == "Body text"


def test_mbox_line_and_stray_header_lines() -> None:
    got = parse(
        mail(
            "From someone@example.com Wed Apr 19 20:56:33 2017",
            "---- Original message ----",
            "Received: from a by b",
            "Return-Path: <x@example.com>",
            "From: real@example.com",
            "Subject: pasted",
            "Content-Type: multipart/alternative;",
            'boundary="b1"',
            "",
            "--b1",
            "Content-Type: text/plain",
            "",
            "hi",
            "--b1--",
        )
    )
    assert got.sender is not None and got.sender.address == "real@example.com"
    assert got.subject == "pasted" and got.text == "hi"


# ----- bodies and charsets ------------------------------------------------------------
@pytest.mark.parametrize(
    ("ctype", "body", "text", "defect"),
    [
        ("text/plain; charset=x-no-such-charset", "café".encode(), "café", True),
        ("text/plain; charset=utf-8", b"caf\xe9", "café", True),
        ("text/plain; charset=iso-8859-1", b"5 \x80 caf\xe9", "5 € café", False),
        ("text/plain; charset=windows-1252", b"\x93hi\x94", "\u201chi\u201d", False),
        ("text/plain; charset=ISO-2022-JP", "テスト".encode("iso2022_jp"), "テスト", False),
        ("text/plain", "テスト".encode("iso2022_jp"), "テスト", False),  # undeclared ISO-2022-JP
        ("text/plain; charset=iso-2022-jp", "ツール".encode("cp932"), "ツール", True),
        ("text/plain", "naïve".encode(), "naïve", False),
        ("text/plain; charset=unknown-8bit", "naïve".encode(), "naïve", False),
        ('text/plain; charset=""', b"plain", "plain", False),
    ],
)
def test_body_charsets(ctype: str, body: bytes, text: str, defect: bool) -> None:
    got = parse(simple(ctype=ctype, body=body))
    assert got.text == text
    assert any("charset" in d for d in got.defects) == defect


@pytest.mark.parametrize(
    "charset",
    ["zlib", "rot13", "base64", "undefined", "utf-16", "unicode_escape", '"; DROP', "x" * 300],
)
def test_hostile_charset_names_never_raise(charset: str) -> None:
    got = parse(
        simple(
            f"=?{charset}?Q?caf=C3=A9?=",
            ctype=f"text/plain; charset={charset}",
            body="café \\x41".encode(),
        )
    )
    assert got.parsed and got.subject and got.text


def test_quoted_printable_and_flowed_text() -> None:
    qp = parse(
        simple(
            extra=("Content-Transfer-Encoding: quoted-printable",),
            body="caf=C3=A9 =ZZ soft=\r\nbreak",
        )
    )
    assert qp.text == "café =ZZ softbreak"
    flowed = parse(
        simple(ctype="text/plain; charset=utf-8; format=flowed", body="one \r\ntwo\r\n-- \r\nsig")
    )
    assert flowed.text == "one two\n-- \nsig"


def test_html_only_mail_gets_text() -> None:
    html = (
        "<html><head><title>T</title><style>p{color:red}</style></head><body>"
        "<script>alert(1)</script><!-- hidden --><p>Hello&nbsp;&amp; welcome</p>"
        "<div>Line<br>break</div><table><tr><td>a</td><td>b</td></tr></table>"
        "</body></html>"
    )
    got = parse(simple(ctype="text/html; charset=utf-8", body=html))
    assert got.html == html
    assert got.text == "Hello & welcome\n\nLine\nbreak\n\na b"


def test_html_charset_from_meta_tag() -> None:
    html = b'<meta charset="windows-1252"><p>caf\xe9</p>'
    assert parse(simple(ctype="text/html", body=html)).text == "café"


def test_alternative_and_related() -> None:
    raw = mail(
        "From: a@example.com",
        "Subject: alt",
        "Content-Type: multipart/alternative; boundary=A",
        "",
        "--A",
        "Content-Type: text/plain; charset=utf-8",
        "",
        "plain text",
        "--A",
        'Content-Type: multipart/related; boundary=R; type="text/html"',
        "",
        "--R",
        "Content-Type: text/html; charset=utf-8",
        "",
        '<p>html <img src="cid:logo@x"></p>',
        "--R",
        "Content-Type: image/png",
        "Content-ID: <logo@x>",
        "Content-Transfer-Encoding: base64",
        "",
        b64(PNG),
        "--R--",
        "--A--",
    )
    got = parse(raw)
    assert got.text == "plain text" and got.html == '<p>html <img src="cid:logo@x"></p>'
    [logo] = got.attachments
    assert (logo.inline, logo.content_id, logo.content_type, logo.payload) == (
        True,
        "logo@x",
        "image/png",
        PNG,
    )
    assert logo.filename == "part-1.png"


# ----- attachments --------------------------------------------------------------------
@pytest.mark.parametrize(
    ("disposition", "expected"),
    [
        ("attachment; filename*=utf-8''%E2%82%AC%20rates.pdf", "€ rates.pdf"),
        ("attachment; filename*0*=utf-8''Gr%C3%BC; filename*1*=%C3%9Fe.pdf", "Grüße.pdf"),
        ('attachment; filename*0="long name "; filename*1="part.pdf"', "long name part.pdf"),
        ("attachment; filename*=\"iso-8859-1''Best%E4tigung.pdf\"", "Bestätigung.pdf"),
        ('attachment; filename="=?utf-8?B?w6TDtsO8LnBkZg==?="', "äöü.pdf"),
        ("attachment; filename=unquoted name.pdf", "unquoted name.pdf"),
        ('attachment; filename="unterminated.pdf', "unterminated.pdf"),
        ('attachment;filename="../../etc/passwd"', "etc_passwd"),
    ],
)
def test_attachment_file_names(disposition: str, expected: str) -> None:
    part = (
        f"Content-Type: application/pdf\r\nContent-Disposition: {disposition}\r\n"
        f"Content-Transfer-Encoding: base64\r\n\r\n{b64(PDF)}"
    )
    [item] = parse(mixed(TEXT_PART, part)).attachments
    assert (item.filename, item.payload, item.size) == (expected, PDF, len(PDF))


def test_unnamed_parts_get_names() -> None:
    parts = (
        f"Content-Type: image/png\r\nContent-Transfer-Encoding: base64\r\n\r\n{b64(PNG)}",
        'Content-Type: application/pdf; name="from-type.pdf"\r\n\r\n%PDF',
        "Content-Type: message/delivery-status\r\nContent-Description: Delivery report\r\n\r\n"
        "Status: 5.0.0",
        "Content-Type: image/jpeg\r\nContent-ID: <image001.jpg@01D2>\r\n"
        "Content-Disposition: inline\r\n\r\n\xff\xd8",
        "Content-Type: application/x-thing\r\nContent-Disposition: attachment\r\n\r\nx",
    )
    names = [a.filename for a in parse(mixed(TEXT_PART, *parts)).attachments]
    assert names == ["part-1.png", "from-type.pdf", "Delivery report.txt", "image001.jpg", "part-5"]


def test_inline_flag_needs_content_id_and_no_attachment_disposition() -> None:
    parts = (
        "Content-Type: image/png\r\nContent-ID: <a@x>\r\nContent-Disposition: inline\r\n\r\n.",
        "Content-Type: image/png\r\nContent-ID: <b@x>\r\n"
        "Content-Disposition: attachment; filename=b.png\r\n\r\n.",
        "Content-Type: application/pdf\r\nContent-Disposition: inline; filename=c.pdf\r\n\r\n.",
    )
    got = parse(mixed(TEXT_PART, *parts)).attachments
    assert [(a.content_id, a.inline) for a in got] == [("a@x", True), ("b@x", False), (None, False)]


def test_tnef_is_just_an_attachment() -> None:
    tnef = b"\x78\x9f\x3e\x22" + b"\x00" * 20
    got = parse(mixed(TEXT_PART, attachment_part("winmail.dat", tnef, "application/ms-tnef")))
    [item] = got.attachments
    assert (item.filename, item.content_type, item.payload) == (
        "winmail.dat",
        "application/ms-tnef",
        tnef,
    )


def test_bad_base64_is_decoded_leniently_with_defect() -> None:
    broken = b64(PDF)[:-3] + "!!*"  # junk characters and lost padding
    part = f"Content-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n\r\n{broken}"
    got = parse(mixed(TEXT_PART, part))
    assert got.attachments[0].payload.startswith(PDF[:30])
    assert any("base64" in d for d in got.defects)


def test_nested_message_is_one_attachment_named_from_its_subject() -> None:
    inner = mixed(TEXT_PART, attachment_part("inner.pdf")).replace(
        b"Subject: parts", b"Subject: =?utf-8?Q?Fwd=3A_Gr=C3=BC=C3=9Fe?=", 1
    )
    raw = mixed(
        TEXT_PART,
        "Content-Type: message/rfc822\r\n\r\n" + inner.decode(),
        "Content-Type: message/rfc822\r\nContent-Description: Undelivered Message"
        "\r\n\r\nFrom: x@example.com\r\n\r\nno subject",
        boundary="outer",
    )
    got = parse(raw)
    assert [(a.filename, a.content_type) for a in got.attachments] == [
        ("Fwd_ Grüße.eml", "message/rfc822"),
        ("Undelivered Message.eml", "message/rfc822"),
    ]
    assert got.attachments[0].payload == inner
    assert got.text == "See attached."


def test_hundreds_of_attachments_with_the_same_name() -> None:
    got = parse(mixed(TEXT_PART, *[attachment_part("scan.pdf")] * 400))
    names = [a.filename for a in got.attachments]
    assert len(names) == 400 and len(set(names)) == 400
    assert names[:3] == ["scan.pdf", "scan (2).pdf", "scan (3).pdf"]
    assert names[-1] == "scan (400).pdf"


# ----- broken structure ---------------------------------------------------------------
def test_missing_boundary_parameter_is_guessed() -> None:
    raw = mixed(TEXT_PART, attachment_part("a.pdf")).replace(b'; boundary="XyZ"', b"")
    got = parse(raw)
    assert [a.filename for a in got.attachments] == ["a.pdf"]
    assert got.text == "See attached."
    assert any("boundary missing" in d for d in got.defects)


def test_boundary_not_in_body_reads_as_text() -> None:
    raw = mail(
        "From: a@example.com", "Content-Type: multipart/mixed; boundary=nowhere", "", "just text"
    )
    got = parse(raw)
    assert got.text == "just text" and got.attachments == ()
    assert any("boundary" in d for d in got.defects)


def test_missing_closing_boundary_keeps_the_last_part() -> None:
    raw = mixed(TEXT_PART, attachment_part("last.pdf")).removesuffix(b"\r\n--XyZ--")
    got = parse(raw)
    assert [a.payload for a in got.attachments] == [PDF]
    assert any("closing boundary" in d for d in got.defects)


def test_part_without_blank_line_after_headers() -> None:
    got = parse(mixed("Content-Type: text/plain\r\nContent-Transfer-Encoding: 7bit\r\nHello"))
    assert got.text == "Hello"


def test_invalid_content_type_is_text() -> None:
    got = parse(simple(ctype="garbage", body="still text"))
    assert got.text == "still text" and any("Content-Type" in d for d in got.defects)


@pytest.mark.parametrize("depth", [60, 5000])
def test_deep_nesting_is_capped(depth: int) -> None:
    lines = ["From: a@example.com", "Subject: deep"]
    for level in range(depth):
        lines += [f"Content-Type: multipart/mixed; boundary=b{level}", "", f"--b{level}"]
    lines += ["Content-Type: text/plain", "", "bottom"]
    lines += [f"--b{level}--" for level in reversed(range(depth))]
    got = parse(mail(*lines))
    assert got.parsed and got.subject == "deep"
    assert any("nesting deeper than 50" in d for d in got.defects)
    assert len(got.attachments) == 1  # the too-deep rest, kept as one opaque part


def test_not_a_mail_at_all() -> None:
    for raw in (b"", b"\x00\xff" * 100, b"just a line of text without headers"):
        got = parse(raw)
        assert not got.parsed and got.defects


def test_wrong_input_type_is_reported_not_raised() -> None:
    got = parse(None)  # type: ignore[arg-type]
    assert not got.parsed and got.defects[0].startswith("parser failed: TypeError")


# ----- strip_attachments --------------------------------------------------------------
def test_strip_attachments_keeps_bodies_and_inline_images() -> None:
    related = (
        'Content-Type: multipart/related; boundary="R"\r\n\r\n'
        '--R\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<p>hi <img src="cid:i@x"></p>'
        f"\r\n--R\r\nContent-Type: image/png\r\nContent-ID: <i@x>\r\n"
        f"Content-Transfer-Encoding: base64\r\n\r\n{b64(PNG)}\r\n--R--"
    )
    alternative = (
        "Content-Type: multipart/alternative; boundary=A\r\n\r\n--A\r\n"
        f"{TEXT_PART}\r\n--A\r\n{related}\r\n--A--"
    )
    raw = mixed(
        alternative,
        attachment_part("big.pdf", PDF * 100),
        "Content-Type: message/rfc822\r\n\r\nSubject: old\r\n\r\nold body",
    )
    before = parse(raw)
    stripped = strip_attachments(raw)
    assert parse(raw, strip=True).stripped == stripped
    after = parse(stripped)
    assert (after.text.splitlines()[0], after.html) == (before.text, before.html)
    assert [(a.inline, a.payload) for a in after.attachments] == [(True, PNG)]
    assert b"[attachment removed: big.pdf (application/pdf, 4500 bytes)]" in stripped
    assert b"[attachment removed: old.eml (message/rfc822" in stripped
    assert len(stripped) < len(raw) / 2
    assert stripped.startswith(raw[: raw.index(b"preamble")])  # the rest is byte-identical


def test_strip_attachments_of_a_single_part_attachment_mail() -> None:
    raw = mail(
        "From: a@example.com",
        "Subject: scan",
        "Content-Type: application/pdf",
        "Content-Disposition: attachment; filename=scan.pdf",
        "Content-Transfer-Encoding: base64",
        "",
        b64(PDF),
    )
    stripped = strip_attachments(raw)
    after = parse(stripped)
    assert after.subject == "scan" and after.attachments == ()
    assert after.text.startswith("[attachment removed: scan.pdf")


def test_strip_attachments_returns_bad_input_unchanged() -> None:
    for raw in (b"", b"\xff" * 50, b"no headers"):
        assert strip_attachments(raw) == raw
    assert strip_attachments(None) == b""  # type: ignore[arg-type]


# ----- sanitize_filename --------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("../../etc/passwd", "etc_passwd"),
        ("a/b\\c.txt", "a_b_c.txt"),
        ("C:\\Users\\x\\report.pdf", "C__Users_x_report.pdf"),
        ("CON.txt", "_CON.txt"),
        ("nul", "_nul"),
        ("com1.tar.gz", "_com1.tar.gz"),
        ("\x00evil\x07.exe", "evil.exe"),
        ("invoice\u202efdp.exe", "invoicefdp.exe"),
        (".bashrc", "bashrc"),
        ("report..pdf", "report.pdf"),
        ('what?<"x">|*.txt', "what___x____.txt"),
        ("trailing dots. . .", "trailing dots"),
        ("Tax Invoice  INX.PDF", "Tax Invoice  INX.PDF"),
        ("", "attachment"),
        ("...", "attachment"),
    ],
)
def test_sanitize_filename(name: str, expected: str) -> None:
    assert sanitize_filename(name, set()) == expected


def test_sanitize_filename_empty_uses_content_type_extension() -> None:
    assert sanitize_filename("", set(), "application/pdf") == "attachment.pdf"
    assert sanitize_filename("/", set(), "image/png") == "attachment.png"


def test_sanitize_filename_caps_length_keeping_extension() -> None:
    long = sanitize_filename("x" * 300 + ".pdf", set())
    assert len(long) == 150 and long.endswith("x.pdf")
    wide = sanitize_filename("報" * 300 + ".docx", set())
    assert wide.endswith(".docx") and len(wide.encode("utf-8")) <= 255


def test_sanitize_filename_makes_duplicates_unique() -> None:
    used: set[str] = set()
    names = [
        sanitize_filename(n, used)
        for n in ("a.pdf", "a.pdf", "a.pdf", "b", "b", "x.tar.gz", "x.tar.gz")
    ]
    assert names == ["a.pdf", "a (2).pdf", "a (3).pdf", "b", "b (2)", "x.tar.gz", "x (2).tar.gz"]
    assert used == set(names)
    assert sanitize_filename("y" * 300 + ".pdf", {("y" * 146) + ".pdf"}).endswith(" (2).pdf")


_WINDOWS_RESERVED = {
    "CON",
    "PRN",
    "AUX",
    "NUL",
    *(f"COM{i}" for i in range(10)),
    *(f"LPT{i}" for i in range(10)),
}


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=400))
def test_sanitize_filename_is_always_safe(name: str) -> None:
    used: set[str] = set()
    first = sanitize_filename(name, used)
    second = sanitize_filename(name, used)
    for result in (first, second):
        assert result and len(result) <= 150 and len(result.encode("utf-8")) <= 255
        assert not any(c in result for c in '/\\<>:"|?*')
        assert ".." not in result and not result.startswith((".", " "))
        assert not any(unicodedata.category(c) == "Cc" for c in result)
        assert result.split(".")[0].strip().upper() not in _WINDOWS_RESERVED
    assert first != second and used == {first, second}


# ----- never raises -------------------------------------------------------------------
def _check(raw: bytes) -> None:
    got = parse(raw)
    assert isinstance(got, parser.ParsedMail) and isinstance(got.text, str)
    assert all(isinstance(a.payload, bytes) for a in got.attachments)
    assert isinstance(strip_attachments(raw), bytes)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=4000))
def test_parse_never_raises_on_arbitrary_bytes(raw: bytes) -> None:
    _check(raw)


SAMPLES = [
    simple("=?utf-8?B?w6TDtsO8?=", extra=("Date: Mon, 3 Dec 2012 13:39:23 +0100",)),
    mixed(
        TEXT_PART,
        attachment_part("a b.pdf"),
        "Content-Type: message/rfc822\r\n\r\n"
        "Subject: inner\r\nContent-Type: multipart/mixed; boundary=in\r\n\r\n--in\r\n"
        "Content-Type: text/plain\r\n\r\nx\r\n--in--",
    ),
    mail(
        "From: =?iso-8859-1?Q?B=FCrling,=20A?= <a@example.com>",
        "Subject: alt",
        "Content-Type: multipart/alternative; boundary=A",
        "",
        "--A",
        "Content-Type: text/plain; charset=iso-2022-jp",
        "",
        "\x1b$B%F%9%H\x1b(B",
        "--A",
        "Content-Type: text/html; charset=utf-8",
        "Content-Transfer-Encoding: quoted-printable",
        "",
        "<p>caf=C3=A9<br>",
        "--A--",
    ),
    mixed(
        "Content-Type: application/pdf\r\nContent-Disposition: attachment; "
        "filename*0*=utf-8''%E2%82; filename*1*=%AC.pdf\r\n"
        "Content-Transfer-Encoding: base64\r\n\r\nJVBER!!i0xLjQ"
    ),
]


@st.composite
def mutated_messages(draw: st.DrawFn) -> bytes:
    """A sample message with a few random byte-level mutations."""
    raw = bytearray(draw(st.sampled_from(SAMPLES)))
    for _ in range(draw(st.integers(1, 6))):
        if not raw:
            break
        pos = draw(st.integers(0, len(raw) - 1))
        action = draw(st.sampled_from(["flip", "insert", "delete", "duplicate", "truncate"]))
        if action == "flip":
            raw[pos] = draw(st.integers(0, 255))
        elif action == "insert":
            raw[pos:pos] = draw(
                st.sampled_from(
                    [b"\r\n", b"--", b"=?", b"?=", b"\x00", b";", b'"', b"\r\n\r\n", b"=", b"\xff"]
                )
            )
        elif action == "delete":
            del raw[pos : pos + draw(st.integers(1, 40))]
        elif action == "duplicate":
            raw[pos:pos] = raw[pos : pos + draw(st.integers(1, 200))]
        else:
            del raw[pos:]
    return bytes(raw)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_messages())
def test_parse_never_raises_on_mutated_messages(raw: bytes) -> None:
    _check(raw)
