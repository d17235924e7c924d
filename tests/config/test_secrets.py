"""Secret references: a wrong key or a tampered value must be a clear error, never a crash."""

from __future__ import annotations

import base64
import io
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from engage_listener.config.secret_refs import (
    KEY_NAME,
    default_key_path,
    encrypt,
    generate_key,
    load_key,
    read_secret_interactively,
    resolve,
)
from engage_listener.errors import SecretError
from engage_listener.observe.logs import _SECRETS


@pytest.fixture(autouse=True)
def _forget_registered_secrets() -> Iterator[None]:
    """resolve() registers every secret for log redaction; keep other tests' logs unaffected."""
    before = set(_SECRETS)
    yield
    _SECRETS.intersection_update(before)


@pytest.fixture
def key_path(tmp_path: Path) -> Path:
    path = tmp_path / "state" / KEY_NAME
    generate_key(path)
    return path


def test_keygen_creates_owner_only_key(key_path: Path) -> None:
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(key_path.parent.stat().st_mode) & 0o077 == 0
    assert len(load_key(key_path)) == 32


def test_keygen_refuses_to_overwrite(key_path: Path) -> None:
    before = key_path.read_bytes()
    with pytest.raises(SecretError, match="already exists"):
        generate_key(key_path)
    assert key_path.read_bytes() == before


def test_round_trip_non_ascii(key_path: Path) -> None:
    secret = "pässwörd €🔑 with spaces"
    value = encrypt(secret, load_key(key_path))
    assert value.startswith("enc:v1:")
    assert secret not in value
    assert resolve(value, key_path=key_path) == secret
    assert encrypt(secret, load_key(key_path)) != value  # fresh nonce each time


def test_wrong_key(key_path: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.key"
    generate_key(other)
    value = encrypt("hunter22", load_key(key_path))
    with pytest.raises(SecretError, match="wrong key or tampered value") as info:
        resolve(value, key_path=other)
    assert value not in str(info.value)
    assert "hunter22" not in str(info.value)


def test_tampered_value(key_path: Path) -> None:
    value = encrypt("hunter22", load_key(key_path))
    blob = bytearray(base64.urlsafe_b64decode(value.removeprefix("enc:v1:")))
    blob[-5] ^= 0x01
    tampered = "enc:v1:" + base64.urlsafe_b64encode(bytes(blob)).decode()
    with pytest.raises(SecretError, match="wrong key or tampered value"):
        resolve(tampered, key_path=key_path)


@pytest.mark.parametrize("garbage", ["enc:v1:", "enc:v1:not*base64", "enc:v1:QUJD", "enc:v9:QUJD"])
def test_garbage_encrypted_values(key_path: Path, garbage: str) -> None:
    with pytest.raises(SecretError, match="cannot decrypt"):
        resolve(garbage, key_path=key_path)


def test_missing_key_message(tmp_path: Path) -> None:
    missing = tmp_path / KEY_NAME
    with pytest.raises(SecretError) as info:
        load_key(missing)
    assert str(info.value).startswith(
        f"no key file at {missing}: create one with `engage-listener keygen --key-file {missing}`"
    )
    with pytest.raises(SecretError, match="no key file"):
        resolve("enc:v1:QUJD", key_path=missing)


def test_malformed_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.key"
    bad.write_text("short\n")
    bad.chmod(0o600)
    with pytest.raises(SecretError, match="malformed"):
        load_key(bad)


def test_enc_uses_default_key_path(key_path: Path) -> None:
    value = encrypt("s3cret", load_key(key_path))
    environ = {"STATE_DIRECTORY": str(key_path.parent)}
    assert resolve(value, environ=environ) == "s3cret"


def test_env_reference() -> None:
    assert resolve("env:MAIL_PW", environ={"MAIL_PW": "from-env"}) == "from-env"
    with pytest.raises(SecretError, match="MAIL_PW is not set"):
        resolve("env:MAIL_PW", environ={})


def test_file_reference_relative_to_base_dir(tmp_path: Path) -> None:
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "pw").write_text("from-file\n\n")
    assert resolve("file:secrets/pw", base_dir=tmp_path) == "from-file\n"
    assert resolve(f"file:{tmp_path / 'secrets' / 'pw'}") == "from-file\n"
    with pytest.raises(SecretError, match="cannot read secret file"):
        resolve("file:nope", base_dir=tmp_path)


def test_credential_reference(tmp_path: Path) -> None:
    (tmp_path / "imap-pw").write_text("from-credential\n")
    environ = {"CREDENTIALS_DIRECTORY": str(tmp_path)}
    assert resolve("credential:imap-pw", environ=environ) == "from-credential"
    with pytest.raises(SecretError, match="no credential other"):
        resolve("credential:other", environ=environ)
    with pytest.raises(SecretError, match="CREDENTIALS_DIRECTORY is not set"):
        resolve("credential:imap-pw", environ={})
    with pytest.raises(SecretError, match="not a plain file name"):
        resolve("credential:../imap-pw", environ=environ)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("plain:env:HOME", "env:HOME"),
        ("plain:", ""),
        ("correct horse battery", "correct horse battery"),
        ("https://not-a-prefix", "https://not-a-prefix"),
        ("ENV:upper-case is plain", "ENV:upper-case is plain"),
        ("", ""),
    ],
)
def test_plain_values(value: str, expected: str) -> None:
    assert resolve(value, environ={}) == expected


def test_resolved_secret_is_registered_for_redaction() -> None:
    resolve("env:X", environ={"X": "registered-secret-xyz"})
    assert "registered-secret-xyz" in _SECRETS


def test_default_key_path_precedence(tmp_path: Path) -> None:
    creds, state = tmp_path / "creds", tmp_path / "state"
    creds.mkdir()
    assert default_key_path({}) == Path("/var/lib/engage-listener") / KEY_NAME
    both = {"CREDENTIALS_DIRECTORY": str(creds), "STATE_DIRECTORY": f"{state}:/elsewhere"}
    assert default_key_path(both) == state / KEY_NAME  # no credential file yet
    (creds / KEY_NAME).write_text("x")
    assert default_key_path(both) == creds / KEY_NAME
    assert default_key_path({"CREDENTIALS_DIRECTORY": str(tmp_path / "none")}) == (
        Path("/var/lib/engage-listener") / KEY_NAME
    )


def test_read_secret_from_pipe() -> None:
    err = io.StringIO()
    assert read_secret_interactively(io.StringIO("pässwörd\nignored\n"), err) == "pässwörd"
    assert err.getvalue() == ""  # nothing echoed
    assert read_secret_interactively(io.StringIO("no-newline"), err) == "no-newline"
    with pytest.raises(SecretError, match="empty"):
        read_secret_interactively(io.StringIO(""), err)


def test_read_secret_from_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    answers = iter(["one", "two"])
    monkeypatch.setattr("getpass.getpass", lambda prompt, stream: next(answers))
    with pytest.raises(SecretError, match="differ"):
        read_secret_interactively(Tty(), io.StringIO())
    answers = iter(["same", "same"])
    assert read_secret_interactively(Tty(), io.StringIO()) == "same"
    answers = iter(["once"])
    assert read_secret_interactively(Tty(), io.StringIO(), confirm=False) == "once"
