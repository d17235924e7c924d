"""`enc:` key files others may read are refused, like ssh refuses such private keys."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from engage_listener.config.secret_refs import encrypt, generate_key, load_key
from engage_listener.errors import SecretError
from tests.support.config_xml import block, write_config


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_key_file_readable_by_group_or_others_is_refused_with_the_fix(
    tmp_path: Path, mode: int
) -> None:
    key = tmp_path / "el.key"
    generate_key(key)
    load_key(key)  # 0600 as keygen writes it: fine
    key.chmod(mode)
    with pytest.raises(SecretError) as caught:
        load_key(key)
    message = str(caught.value)
    assert str(key) in message and f"{mode:04o}" in message and f"chmod 600 {key}" in message


def test_check_config_reports_the_open_key_file_against_the_password(tmp_path: Path) -> None:
    key = tmp_path / "el.key"
    generate_key(key)
    value = encrypt("s3cret-open-key", load_key(key))
    config = tmp_path / "el.xml"
    listener = {  # the Password on line 7, where the error must point
        "HostName": "127.0.0.1",
        "Port": "993",
        "UseSsl": "True",
        "Password": value,
        "UserName": "u",
        "InputFolder": "INBOX",
        "OutputFolder": "Done",
    }
    write_config(config, block("ImapListener", "Default", listener), store=None, key_file=key)
    key.chmod(0o644)
    result = subprocess.run(
        [sys.executable, "-m", "engage_listener", "check-config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"{config}:7: Password: key file {key} has mode 0644" in result.stderr
    assert f"chmod 600 {key}" in result.stderr
    assert "Traceback" not in result.stderr and "s3cret-open-key" not in result.stderr
