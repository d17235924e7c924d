"""Secrets in the XML as operators write them: enc: via the CLI, env:, file:, credential:."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from engage_listener.config.load import load_config
from engage_listener.errors import ConfigError
from tests.support.config_xml import listener_xml, write_config


def cli(
    *args: str, stdin: str = "", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "engage_listener", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, **(env or {})},
    )


def config_with_password(tmp_path: Path, password: str, extra: str = "") -> Path:
    (tmp_path / "ca.pem").write_text("x")
    server = type("S", (), {"host": "h", "imap_port": 143, "ca_file": tmp_path / "ca.pem"})
    xml = listener_xml(server, "soporte", Password=password)  # type: ignore[arg-type]
    return write_config(tmp_path / "el.xml", xml, tail=extra)


def test_keygen_and_encrypt_password_round_trip_through_the_config(tmp_path: Path) -> None:
    key = tmp_path / "keys" / "el.key"
    made = cli("keygen", "--key-file", str(key))
    assert made.returncode == 0, made.stderr
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    assert cli("keygen", "--key-file", str(key)).returncode == 1  # never overwritten
    enc = cli("encrypt-password", "--key-file", str(key), stdin="Contraseña-ñ-€\n")
    assert enc.returncode == 0 and enc.stdout.startswith("enc:v1:")
    assert "Contraseña" not in enc.stdout + enc.stderr
    path = config_with_password(
        tmp_path, enc.stdout.strip(), f"<Secrets><KeyFile>{key}</KeyFile></Secrets>\n"
    )
    (listener,) = load_config(path).imap_listeners
    assert listener.password.reveal() == "Contraseña-ñ-€"
    shown = cli("check-config", "--show", str(path))
    assert shown.returncode == 0 and "Contraseña" not in shown.stdout
    assert "password = Secret('***')" in shown.stdout


@pytest.mark.slow
def test_wrong_key_or_tampered_value_is_a_config_error_naming_the_element(tmp_path: Path) -> None:
    key, other = tmp_path / "a.key", tmp_path / "b.key"
    assert cli("keygen", "--key-file", str(key)).returncode == 0
    assert cli("keygen", "--key-file", str(other)).returncode == 0
    value = cli("encrypt-password", "--key-file", str(key), stdin="s3cret\n").stdout.strip()
    middle = len(value) // 2  # inside the ciphertext, never in base64 padding bits
    tampered = value[:middle] + ("A" if value[middle] != "A" else "B") + value[middle + 1 :]
    for secret, keyfile in ((value, other), (tampered, key)):
        path = config_with_password(
            tmp_path, secret, f"<Secrets><KeyFile>{keyfile}</KeyFile></Secrets>\n"
        )
        result = cli("check-config", str(path))
        assert result.returncode == 2
        assert f"{path}:7: Password: cannot decrypt" in result.stderr
        assert "Traceback" not in result.stderr and "s3cret" not in result.stderr


def test_env_file_and_credential_references(tmp_path: Path) -> None:
    (tmp_path / "pw.txt").write_text("from-file\n")
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "imap").write_text("from-credential")
    cases = {
        "env:EL_TEST_PW": "from-env",
        "file:pw.txt": "from-file",
        "credential:imap": "from-credential",
        "plain:env:literal": "env:literal",
    }
    os.environ["EL_TEST_PW"] = "from-env"
    os.environ["CREDENTIALS_DIRECTORY"] = str(creds)
    try:
        for reference, expected in cases.items():
            (listener,) = load_config(config_with_password(tmp_path, reference)).imap_listeners
            assert listener.password.reveal() == expected
        del os.environ["EL_TEST_PW"]
        with pytest.raises(ConfigError, match="Password"):
            load_config(config_with_password(tmp_path, "env:EL_TEST_PW"))
    finally:
        os.environ.pop("EL_TEST_PW", None)
        os.environ.pop("CREDENTIALS_DIRECTORY", None)


def test_encrypt_password_without_a_key_says_how_to_make_one(tmp_path: Path) -> None:
    result = cli("encrypt-password", "--key-file", str(tmp_path / "none.key"), stdin="x\n")
    assert result.returncode == 1
    assert "engage-listener keygen" in result.stderr and "Traceback" not in result.stderr
