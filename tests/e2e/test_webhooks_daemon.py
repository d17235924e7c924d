"""The daemon and the CRM's receiver: kill -9 while an event is in flight, then restart."""

from __future__ import annotations

import signal
import sqlite3
from pathlib import Path

import pytest

from devkit.dovecot import DovecotSandbox
from tests.support.config_xml import DONE, NEW, ack_xml, listener_xml, webhook_xml, write_config
from tests.support.daemon import cli, events, start_daemon, wait_for
from tests.support.helpers import db_rows, make_mail
from tests.support.servers.smtp_server import SmtpTestServer
from tests.support.servers.webhook_server import Reply, WebhookReceiver
from tests.support.webhooks import SECRET


def _states(db: Path) -> dict[str, int]:
    try:
        rows = db_rows(db, "SELECT state, count(*) FROM webhook_events GROUP BY state")
    except sqlite3.Error:  # not created, or not migrated yet
        return {}
    return {str(state): int(count) for state, count in rows}


@pytest.mark.smtp("plain", auth=False)
def test_kill_9_between_commit_and_delivery_every_event_arrives_after_restart_once_per_id(
    dovecot: DovecotSandbox,
    mailbox_user: str,
    tmp_path: Path,
    webhook_receiver: object,
    smtp: SmtpTestServer,
) -> None:
    assert callable(webhook_receiver)
    receiver: WebhookReceiver = webhook_receiver(SECRET)
    receiver.script(Reply(delay=120))  # the first POST hangs: the kill finds it in flight
    total = 5
    dovecot.create_folder(mailbox_user, DONE)
    mails = [make_mail(i, sender=f"cliente{i}@example.com") for i in range(total)]
    dovecot.append_many(mailbox_user, NEW, mails)
    hook = webhook_xml(receiver.url, "env:EL_TEST_HOOK", Timeout="60") + ack_xml(smtp.port)
    config = write_config(
        tmp_path / "el.xml",
        listener_xml(dovecot, mailbox_user, inner=hook, SyncMaxChangesCount="1"),
    )
    db, log = tmp_path / "store.sqlite3", tmp_path / "daemon.log"
    env = {"EL_TEST_HOOK": SECRET}
    daemon = start_daemon(config, log, env=env)
    try:  # intake and acknowledgements go on while the receiver holds the first event
        wait_for(lambda: _states(db).get("pending") == total, what="every case's event committed")
        wait_for(lambda: len(receiver.requests()) == 1, what="the first POST in flight")
        wait_for(lambda: len(smtp.messages) == total, what="every acknowledgement sent")
        assert dovecot.count(mailbox_user, DONE) == total
        assert len(receiver.requests()) == 1 and receiver.requests()[0].status is None
    finally:
        daemon.send_signal(signal.SIGKILL)
        daemon.wait(10)
    assert receiver.accepted() == [] and _states(db) == {"pending": total}

    daemon = start_daemon(config, log, env=env)
    try:
        wait_for(lambda: _states(db) == {"delivered": total}, what="every event delivered")
    finally:
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(15) == 0
    stored = [str(r[0]) for r in db_rows(db, "SELECT event_id FROM webhook_events ORDER BY id")]
    assert sorted(receiver.accepted_ids()) == sorted(stored)  # each accepted exactly once
    seen = receiver.requests()
    assert seen[0].event_id == stored[0] and seen[0].status is None  # cut by the kill
    assert [r.event_id for r in seen].count(stored[0]) == 2  # sent again, same id
    assert all(r.signature_ok for r in seen)
    assert {r.event for r in seen} == {"case-opened"}
    assert SECRET not in log.read_text()
    names = [e["event"] for e in events(log)]
    assert names.count("webhook_delivered") == total


def test_webhooks_commands_list_resend_and_close(
    dovecot: DovecotSandbox, mailbox_user: str, tmp_path: Path, webhook_receiver: object
) -> None:
    assert callable(webhook_receiver)
    receiver: WebhookReceiver = webhook_receiver(SECRET)
    receiver.script(Reply(400), Reply(400))
    dovecot.create_folder(mailbox_user, DONE)
    dovecot.append_many(mailbox_user, NEW, [make_mail(i) for i in range(2)])
    hook = webhook_xml(receiver.url, SECRET)
    config = write_config(tmp_path / "el.xml", listener_xml(dovecot, mailbox_user, inner=hook))
    result = cli("run", "--once", "--config", str(config))
    assert result.returncode == 0, result.stdout + result.stderr
    assert SECRET not in result.stdout + result.stderr

    listed = cli("webhooks", "--config", str(config))
    assert listed.returncode == 0 and "2 webhook event(s)" in listed.stdout
    assert listed.stdout.count("failed") == 2 and "last error: HTTP 400" in listed.stdout
    ids = [str(r[0]) for r in db_rows(tmp_path / "store.sqlite3", "SELECT id FROM webhook_events")]

    closed = cli("webhooks", "close", ids[1], "--config", str(config))
    assert closed.returncode == 0 and "closed (was failed)" in closed.stdout
    again = cli("webhooks", "close", ids[1], "--config", str(config))
    assert again.returncode == 1 and "is already closed" in again.stdout
    resent = cli("webhooks", "resend", ids[0], "--json", "--config", str(config))
    assert resent.returncode == 0 and '"done": true' in resent.stdout

    assert cli("run", "--once", "--config", str(config)).returncode == 0
    delivered = cli("webhooks", "list", "--state", "delivered", "--json", "--config", str(config))
    assert delivered.returncode == 0 and delivered.stdout.count('"state": "delivered"') == 1
    assert len(receiver.accepted()) == 1
    refused = cli("webhooks", "resend", ids[0], "--config", str(config))
    assert refused.returncode == 1 and "was delivered at" in refused.stdout
