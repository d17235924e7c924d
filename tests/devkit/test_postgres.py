"""The throwaway PostgreSQL itself (devkit.postgres): every PostgreSQL test trusts it.

Checked here: the application connects over loopback TCP with its password as a role that is
no superuser; durability settings are on; as root the server runs unprivileged; a restart
(fast, or immediate as after a crash) keeps committed data on the same URL; and stopping,
also when the test fails, leaves no process and no folder behind.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import psycopg
import pytest

from devkit.postgres import BIN_ENV, PostgresError, PostgresServer, find_bin_dir
from tests.support.postgres import NOT_INSTALLED, postgres_server, require_postgres

__all__ = ["postgres_server"]  # the fixture, imported to be used here


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_application_role_connects_over_tcp_with_its_password(
    postgres_server: PostgresServer,
) -> None:
    server = postgres_server
    assert server.url == (f"postgresql://engage:{server.password}@127.0.0.1:{server.port}/engage")
    with psycopg.connect(server.url) as conn:
        row = conn.execute(
            "SELECT current_user, current_database(), host(inet_server_addr()),"
            " inet_server_port(), (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)"
        ).fetchone()
        assert row == ("engage", "engage", "127.0.0.1", server.port, False)
        conn.execute("CREATE TABLE owned_by_the_role (n int)")  # it owns its database
        settings = {
            name: conn.execute(f"SHOW {name}").fetchone()[0]  # type: ignore[index]
            for name in ("fsync", "synchronous_commit", "full_page_writes", "max_connections")
        }
    assert settings == {
        "fsync": "on",
        "synchronous_commit": "on",
        "full_page_writes": "on",
        "max_connections": "100",
    }


def test_a_wrong_password_is_refused(postgres_server: PostgresServer) -> None:
    wrong = postgres_server.url.replace(postgres_server.password, "not-the-password")
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(wrong, connect_timeout=10).close()


def test_superuser_work_without_a_driver(postgres_server: PostgresServer) -> None:
    assert postgres_server.sql("SELECT 40 + 2") == "42\n"
    url = postgres_server.create_database("devkit_isolated")
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT current_database()").fetchone() == ("devkit_isolated",)
    with psycopg.connect(postgres_server.superuser_url) as conn:
        assert conn.execute(
            "SELECT rolsuper FROM pg_roles WHERE rolname = current_user"
        ).fetchone() == (True,)
    with pytest.raises(PostgresError, match="does not exist"):
        postgres_server.sql("SELECT * FROM no_such_table")


def test_runs_unprivileged_in_a_private_folder(postgres_server: PostgresServer) -> None:
    status = Path(f"/proc/{postgres_server.pid}/status").read_text()
    uid = int(next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1])
    if os.geteuid() == 0:
        assert uid != 0  # PostgreSQL refuses root; the cluster belongs to `nobody`
    else:
        assert uid == os.geteuid()
    assert postgres_server.root.stat().st_uid == uid
    assert postgres_server.root.stat().st_mode & 0o777 == 0o700
    assert (postgres_server.socket_dir / f".s.PGSQL.{postgres_server.port}").exists()
    assert postgres_server.log_file.exists()


def test_restart_keeps_data_and_stop_leaves_nothing_behind() -> None:
    require_postgres()
    with PostgresServer() as server:
        url, root = server.url, server.root
        with psycopg.connect(url) as conn:
            conn.execute("CREATE TABLE kept (n int)")
            conn.execute("INSERT INTO kept VALUES (1)")
        first = server.pid
        server.restart()
        assert server.pid != first and server.url == url
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("INSERT INTO kept VALUES (2)")
        server.restart("immediate")  # no checkpoint: the start replays the WAL
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT n FROM kept ORDER BY n").fetchall() == [(1,), (2,)]
            processes = server.processes()
            assert server.pid in processes and len(processes) > 3  # backends, checkpointer...
        port = server.port
    assert not [pid for pid in processes if _alive(pid)]
    assert not root.exists()
    assert not _listening(port)
    server.stop()  # again: nothing to do


def test_a_failing_test_still_stops_its_server() -> None:
    require_postgres()
    with pytest.raises(RuntimeError, match="the test failed"), PostgresServer() as server:
        held = psycopg.connect(server.url)  # an open session must not delay the stop
        processes, root = server.processes(), server.root
        raise RuntimeError("the test failed")
    held.close()
    assert not [pid for pid in processes if _alive(pid)]
    assert not root.exists()


def test_missing_postgresql_skips_with_the_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(BIN_ENV, str(tmp_path))  # a folder without initdb
    assert find_bin_dir() is None
    with pytest.raises(pytest.skip.Exception, match="install Debian's postgresql"):
        require_postgres()
    assert "scripts/dev test" in NOT_INSTALLED
    with pytest.raises(PostgresError, match="install Debian's postgresql"):
        PostgresServer(bin_dir=tmp_path)
