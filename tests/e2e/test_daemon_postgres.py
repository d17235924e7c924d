"""The daemon on a PostgreSQL store (issue 16): `run --once` on Dovecot as operators run
it, routing by the example's stored function, every mail once, no secret in its log."""

from __future__ import annotations

import asyncio
from pathlib import Path

import psycopg

from devkit.dovecot import DovecotSandbox
from devkit.postgres import PostgresServer
from tests.support.config_xml import DONE, NEW, listener_xml, write_config
from tests.support.daemon import cli
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
