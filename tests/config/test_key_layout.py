"""The README's systemd layout: the service and every shell command use one key, and tokens
stored by root are the service's to read."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from engage_listener.config.secret_refs import KEY_NAME, default_key_path, key_candidates
from engage_listener.oauth.token_cache import TokenCache


def run(*args: str, env: dict[str, str], stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "engage_listener", *args],
        input=stdin,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def shell_env(state: Path) -> dict[str, str]:
    """A root shell: no systemd credential; STATE_DIRECTORY stands in for /var/lib/..."""
    env = {k: v for k, v in os.environ.items() if k != "CREDENTIALS_DIRECTORY"}
    return {**env, "STATE_DIRECTORY": str(state)}


def layout(tmp_path: Path) -> tuple[Path, Path, Path]:
    """/etc/engage-listener (XML and key, as the README sets up), the state directory, and
    the credentials directory systemd fills from LoadCredential=."""
    etc, state, credentials = tmp_path / "etc", tmp_path / "state", tmp_path / "credentials"
    for directory in (etc, state, credentials):
        directory.mkdir(mode=0o700)
    assert run("keygen", "--key-file", str(etc / KEY_NAME), env=shell_env(state)).returncode == 0
    shutil.copy2(etc / KEY_NAME, credentials / KEY_NAME)  # what LoadCredential= does
    done = run(
        "encrypt-password",
        "--key-file",
        str(etc / KEY_NAME),
        env=shell_env(state),
        stdin="s3cret-Pa55\n",
    )
    assert done.returncode == 0, done.stderr
    (etc / "engage-listener.xml").write_text(
        "<EngageIntegrationService>\n"
        '<ImapListener ID="A"><HostName>imap.example.org</HostName><UserName>u</UserName>'
        f"<Password>{done.stdout.strip()}</Password></ImapListener>\n"
        '<Process ID="P"><UseImapListener>True</UseImapListener></Process>\n'
        "</EngageIntegrationService>\n"
    )
    return etc, state, credentials


def test_a_shell_command_finds_the_key_next_to_the_configuration(tmp_path: Path) -> None:
    etc, state, _ = layout(tmp_path)
    checked = run(
        "check-config", "--config", str(etc / "engage-listener.xml"), env=shell_env(state)
    )
    assert checked.returncode == 0, checked.stderr
    assert not (state / KEY_NAME).exists()  # no second key was needed, or made


def test_the_service_reads_the_same_key_as_a_credential(tmp_path: Path) -> None:
    etc, state, credentials = layout(tmp_path)
    (etc / KEY_NAME).unlink()  # the service sees only what systemd handed it
    service = {**shell_env(state), "CREDENTIALS_DIRECTORY": str(credentials)}
    checked = run("check-config", "--config", str(etc / "engage-listener.xml"), env=service)
    assert checked.returncode == 0, checked.stderr


def test_a_missing_key_says_where_it_was_looked_for(tmp_path: Path) -> None:
    etc, state, _ = layout(tmp_path)
    (etc / KEY_NAME).unlink()
    checked = run(
        "check-config", "--config", str(etc / "engage-listener.xml"), env=shell_env(state)
    )
    assert checked.returncode != 0
    assert "configuration's directory" in checked.stderr and "--key-file" in checked.stderr


def test_key_lookup_order(tmp_path: Path) -> None:
    creds, etc, state = tmp_path / "c", tmp_path / "e", tmp_path / "s"
    env = {"CREDENTIALS_DIRECTORY": str(creds), "STATE_DIRECTORY": str(state)}
    assert key_candidates(env, etc) == [creds / KEY_NAME, etc / KEY_NAME, state / KEY_NAME]
    assert default_key_path(env, etc) == state / KEY_NAME  # none exists: the state directory
    etc.mkdir()
    (etc / KEY_NAME).write_text("k")
    assert default_key_path(env, etc) == etc / KEY_NAME
    creds.mkdir()
    (creds / KEY_NAME).write_text("k")
    assert default_key_path(env, etc) == creds / KEY_NAME


def test_tokens_stored_by_root_belong_to_the_state_directory_owner(
    request: pytest.FixtureRequest,
) -> None:
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root (who stores the tokens) and setpriv (to read as the service)")
    nobody = pwd.getpwnam("nobody")  # stands in for systemd's DynamicUser
    top = Path(tempfile.mkdtemp(prefix="engage-keys-"))  # pytest's tmp_path is root's only
    request.addfinalizer(lambda: shutil.rmtree(top, ignore_errors=True))
    os.chmod(top, 0o755)
    state = top / "state"
    state.mkdir(mode=0o700)
    os.chown(state, nobody.pw_uid, nobody.pw_gid)
    cache = TokenCache(state / "tokens.json", os.urandom(32))
    cache.put("A IMAP", {"kind": "test"}, {"refresh_token": "r"})
    for name in ("tokens.json", "tokens.json.lock"):
        info = (state / name).stat()
        assert (info.st_uid, info.st_gid) == (nobody.pw_uid, nobody.pw_gid), name
        assert info.st_mode & 0o077 == 0, name  # still private to that owner
    as_service = [
        "setpriv",
        f"--reuid={nobody.pw_uid}",
        f"--regid={nobody.pw_gid}",
        "--clear-groups",
        "cat",
        str(state / "tokens.json"),
    ]
    assert subprocess.run(as_service, capture_output=True, check=False).returncode == 0
