"""The daemon on a PostgreSQL store (issue 16): `run --once` on Dovecot as operators run
it, routing by the example's stored function, every mail once, no secret in its log."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import psycopg

from devkit.dovecot import DovecotSandbox
from devkit.postgres import PostgresError, PostgresServer
from tests.support.config_xml import DONE, NEW, listener_xml, write_config
from tests.support.daemon import cli, start_daemon, wait_for
from tests.support.helpers import make_mail
from tests.support.paths import REPO
from tests.support.postgres import fresh_database, postgres_server

__all__ = ["postgres_server"]  # a fixture


async def _install(url: str, sql: str) -> None:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute(sql.encode())


def test_run_once_on_postgresql_takes_every_mail_once(
    dovecot: DovecotSandbox,
    mailbox_user: str,
    postgres_server: PostgresServer,
    tmp_path: Path,
) -> None:
    url = fresh_database(postgres_server)
    asyncio.run(_install(url, (REPO / "examples/routing/pa_sys_msg_in.pgsql").read_text()))
    subjects = ["Reclamo por factura", "Consulta de pago", "Hola"] * 4
    mails = [make_mail(i, subject=s) for i, s in enumerate(subjects)]
    dovecot.create_folder(mailbox_user, DONE)
    dovecot.append_many(mailbox_user, NEW, mails)
    hook = {"RoutingHook": "pg:engage_routing.pa_sys_msg_in", "RoutingTimeout": "10"}
    config = write_config(
        tmp_path / "el.xml", listener_xml(dovecot, mailbox_user, **hook), store=url
    )
    for _ in range(2):  # the second run finds nothing new
        result = cli("run", "--once", "--config", str(config), timeout=120)
        assert result.returncode == 0, result.stdout + result.stderr
        assert postgres_server.password not in result.stdout + result.stderr
    assert dovecot.count(mailbox_user, NEW) == 0
    assert dovecot.count(mailbox_user, DONE) == len(mails)
    database = url.rsplit("/", 1)[1]
    counts = postgres_server.sql(
        "SELECT (SELECT count(DISTINCT message_id) FROM messages),"
        " (SELECT count(*) FROM ledger WHERE state = 'moved'),"
        " (SELECT string_agg(DISTINCT inbox, ',' ORDER BY inbox) FROM cases)",
        database=database,
    )
    assert counts.strip() == f"{len(mails)}|{len(mails)}|Facturacion,General,Reclamos"


def _lease_owner(server: PostgresServer, url: str) -> str:
    """The holder of the listener's lease now ("": none, or no schema yet)."""
    try:
        return server.sql(
            "SELECT coalesce(owner, '') FROM listener_leases WHERE expires_at > now()",
            database=url.rsplit("/", 1)[1],
        ).strip()
    except PostgresError:  # the daemon has not migrated the database yet
        return ""


def test_run_once_is_refused_while_a_daemon_holds_the_listeners_then_takes_them(
    dovecot: DovecotSandbox,
    mailbox_user: str,
    postgres_server: PostgresServer,
    tmp_path: Path,
) -> None:
    url = fresh_database(postgres_server)
    dovecot.create_folder(mailbox_user, DONE)
    store = f"  <Store><Url>{url}</Url><LeaseSeconds>6</LeaseSeconds></Store>\n"
    config = write_config(
        tmp_path / "el.xml", listener_xml(dovecot, mailbox_user), store=None, tail=store
    )
    daemon = start_daemon(config, tmp_path / "daemon.log")
    try:
        wait_for(lambda: _lease_owner(postgres_server, url), 30, "the daemon's lease")
        refused = cli("run", "--once", "--config", str(config), timeout=120)
        assert refused.returncode == 1
        assert "once_refused" in refused.stdout and "Default" in refused.stdout
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(30)
    assert _lease_owner(postgres_server, url) == ""  # a clean stop gives its leases up
    dovecot.append_many(mailbox_user, NEW, [make_mail(1), make_mail(2)])
    taken = cli("run", "--once", "--config", str(config), timeout=120)
    assert taken.returncode == 0, taken.stdout + taken.stderr
    assert dovecot.count(mailbox_user, DONE) == 2
    daemons = postgres_server.sql(
        "SELECT count(*) || ',' || count(stopped_at) FROM daemons",
        database=url.rsplit("/", 1)[1],
    )
    assert daemons.strip() == "3,3"  # the daemon, the refused pass, the pass: all stopped
