"""Fault injection: the store's database file turns read-only under the running daemon.

Root writes through any file mode, so the daemon runs as `nobody` (setpriv) for this
test. SQLite opens a file it cannot write read-only and stays so, even once the file
is writable again: the store must notice and reopen, or the daemon would back off
forever. Nothing may be moved on the server while the store cannot commit.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from devkit.dovecot import DovecotSandbox
from tests.support.config_xml import listener_xml, write_config
from tests.support.daemon import wait_for
from tests.support.helpers import db_rows, make_mail

NEW, DONE = "IMAP/New", "IMAP/Done"


@pytest.fixture
def nobody_dir() -> Iterator[tuple[Path, list[str]]]:
    """A directory owned by `nobody`, and the command prefix that runs as `nobody`."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to run the daemon as an unprivileged user")
    nobody = pwd.getpwnam("nobody")
    directory = Path(tempfile.mkdtemp(prefix="engage-ro-"))
    os.chmod(directory, 0o755)
    os.chown(directory, nobody.pw_uid, nobody.pw_gid)
    prefix = ["setpriv", f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}", "--clear-groups"]
    try:
        yield directory, prefix
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def events(log: Path, name: str) -> list[dict[str, object]]:
    found = (json.loads(line) for line in log.read_text().splitlines() if line.startswith("{"))
    return [e for e in found if e.get("event") == name]


@pytest.mark.slow
def test_read_only_store_moves_nothing_then_recovers(
    dovecot: DovecotSandbox, mailbox_user: str, nobody_dir: tuple[Path, list[str]]
) -> None:
    directory, as_nobody = nobody_dir
    user = mailbox_user
    first = [make_mail(i, sender=f"ro.a{i}@example.com") for i in range(5)]
    later = [make_mail(i, sender=f"ro.b{i}@example.com") for i in range(20)]
    dovecot.create_folder(user, DONE)
    dovecot.append_many(user, NEW, first)
    config = write_config(directory / "el.xml", listener_xml(dovecot, user))
    db, log = directory / "store.sqlite3", directory / "daemon.log"
    command = [*as_nobody, sys.executable, "-m", "engage_listener", "run", "--config", str(config)]

    # The sandbox's CA file is in a directory only root may enter: a plain config error.
    refused = subprocess.run([*command, "--once"], capture_output=True, text=True, check=False)
    assert refused.returncode == 2, refused.stdout[-2000:] + refused.stderr[-2000:]
    assert f"CaFile: CA file {dovecot.ca_file} cannot be read: Permission denied" in (
        refused.stderr
    )
    assert "Traceback" not in refused.stderr
    shutil.copy(dovecot.ca_file, directory / "ca.pem")
    xml = listener_xml(dovecot, user, CaFile="ca.pem")
    config = write_config(directory / "el.xml", xml)

    once = subprocess.run([*command, "--once"], capture_output=True, text=True, check=False)
    assert once.returncode == 0, once.stdout[-2000:] + once.stderr[-2000:]
    assert db_rows(db, "SELECT count(*) FROM cases") == [(5,)]

    dovecot.append_many(user, NEW, later)
    db.chmod(0o444)
    with log.open("ab") as out:
        daemon = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: len(events(log, "listener_error")) >= 2, 30, "two failed attempts")
        failed = events(log, "listener_error")
        assert {e["error_type"] for e in failed} == {"StoreError"}, failed
        assert all("readonly" in str(e["error"]) for e in failed), failed
        assert all(e["kind"] == "transient" for e in failed), failed
        assert (dovecot.count(user, NEW), dovecot.count(user, DONE)) == (20, 5)
        assert db_rows(db, "SELECT count(*) FROM ledger") == [(5,)]

        db.chmod(0o644)
        wait_for(lambda: dovecot.count(user, DONE) == 25, 30, "recovered, all moved")
        assert daemon.poll() is None, "the daemon exited"
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(15)
    assert dovecot.count(user, NEW) == 0
    assert db_rows(db, "SELECT count(*), count(DISTINCT message_id) FROM messages") == [(25, 25)]
    assert db_rows(db, "SELECT count(*) FROM ledger") == [(25,)]
    assert db_rows(db, "SELECT count(*) FROM cases") == [(25,)]
    assert "Traceback" not in log.read_text()
