"""Passwords encrypted by the original integration service are warned about, not used silently."""

from __future__ import annotations

from pathlib import Path

import pytest

from engage_listener.config.cautions import config_warnings
from engage_listener.config.load import parse_config
from engage_listener.config.secret_refs import looks_like_original_cipher


def config_with(password: str, smtp_password: str | None = None) -> bytes:
    ack = ""
    if smtp_password is not None:
        ack = (
            "<Acknowledgement><Smtp><HostName>smtp.example.org</HostName>"
            f"<UserName>s</UserName><Password>{smtp_password}</Password></Smtp>"
            "<FromAddress>soporte@example.org</FromAddress></Acknowledgement>\n"
        )
    return (
        "<EngageIntegrationService>\n"
        '<ImapListener ID="A">\n<HostName>h</HostName>\n<UserName>u</UserName>\n'
        f"<Password>{password}</Password>\n{ack}</ImapListener>\n"
        '<Process ID="P"><UseImapListener>True</UseImapListener></Process>\n'
        "</EngageIntegrationService>\n"
    ).encode()


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("ZR9Zf9oiGhE3olsLuXgnUA==", True),  # one 16-byte block: the SPEC's example
        ("3q2+7wAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=", True),  # two blocks
        ("ZR9Zf9oiGhE3olsLuXgn", False),  # 15 bytes: not whole blocks
        ("correct horse battery staple", False),
        ("Summer2024!", False),
        ("plain:ZR9Zf9oiGhE3olsLuXgnUA==", False),  # said to be the password as typed
        ("enc:v1:abcdef", False),
        ("ZR9Zf9oiGhE3olsLuXgnUA=", False),  # not valid base64 padding
    ],
)
def test_original_cipher_is_recognised_by_shape(value: str, expected: bool) -> None:
    assert looks_like_original_cipher(value) is expected


def test_check_config_warns_naming_file_line_and_the_way_out() -> None:
    config = parse_config(config_with("ZR9Zf9oiGhE3olsLuXgnUA=="), Path("/etc/el/x.xml"))
    (warning,) = [w for w in config_warnings(config) if "original" in w]
    assert warning.startswith("/etc/el/x.xml:5: Password looks encrypted")
    assert "encrypt-password" in warning and "plain:" in warning
    assert "ZR9Zf9oiGhE3olsLuXgnUA==" not in warning  # never echo a password


def test_the_smtp_password_is_checked_too() -> None:
    config = parse_config(config_with("Imap-Pw-4711", "ZR9Zf9oiGhE3olsLuXgnUA=="), Path("/x.xml"))
    assert [w for w in config_warnings(config) if "original" in w]


def test_an_ordinary_password_gives_no_such_warning() -> None:
    config = parse_config(config_with("Summer2024!"), Path("/x.xml"))
    assert not [w for w in config_warnings(config) if "original" in w]
