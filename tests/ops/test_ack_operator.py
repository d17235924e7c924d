"""`engage-listener acks`: the operator's tool for acknowledgements the daemon will not send.

A row becomes `uncertain` when the sender died after telling the server DATA (the
server may hold the message, so it is never sent again automatically) and `failed`
on a 5xx. Only `acks resend` (back to `pending`, due now) or `acks close` (never to
be sent) move them on. Real Dovecot in, a real store, aiosmtpd out, the real CLI.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from devkit.dovecot import DovecotSandbox
from engage_listener.config.load import load_config
from engage_listener.config.model import Config
from engage_listener.outbox.smtp import SmtpEndpoint
from tests.support.config_xml import ack_xml, listener_xml, write_config
from tests.support.daemon import cli
from tests.support.fakes import FakeClock
from tests.support.helpers import Harness, db_rows, deliver, make_mail
from tests.support.servers.smtp_server import SmtpTestServer

NEW, DONE = "IMAP/New", "IMAP/Done"


class Crash(BaseException):
    """The process dying at a chosen point (like kill -9: nothing after it runs)."""


pytestmark = pytest.mark.smtp("plain", auth=False)


def ack_config_file(
    dovecot: DovecotSandbox, user: str, tmp_path: Path, smtp: SmtpTestServer
) -> Path:
    xml = listener_xml(dovecot, user, inner=ack_xml(smtp.port))
    return write_config(tmp_path / "el.xml", xml)


async def ingest(dovecot: DovecotSandbox, user: str, config: Config, mails: list[bytes]) -> None:
    """The listener makes the cases and queues their acknowledgements; nothing is sent."""
    dovecot.create_folder(user, DONE)
    dovecot.append_many(user, NEW, mails)
    (cfg,) = config.listeners
    async with Harness(cfg, config.store.path, FakeClock()) as h:
        assert h.listener is not None
        assert (await h.listener.run_once()).ingested == len(mails)


def acks_json(config: Path, *args: str) -> list[dict[str, Any]]:
    done = cli("acks", *args, "--json", "--config", str(config))
    assert done.returncode == 0, done.stderr
    rows: list[dict[str, Any]] = json.loads(done.stdout)
    return rows


async def test_uncertain_ack_is_listed_resent_once_and_then_never_again(
    dovecot: DovecotSandbox, mailbox_user: str, tmp_path: Path, smtp: SmtpTestServer
) -> None:
    path = ack_config_file(dovecot, mailbox_user, tmp_path, smtp)
    config = load_config(path)
    db = config.store.path
    await ingest(dovecot, mailbox_user, config, [make_mail(1, sender="ana@example.com")])

    async def crash_at_data(ep: SmtpEndpoint, message: Any, *, before_data: Any) -> str:
        await before_data()  # the row is `sending` and committed: then the process dies
        raise Crash

    with pytest.raises(Crash):
        await deliver(config, crash_at_data)
    assert await deliver(config) == 0  # the restart: `sending` becomes `uncertain`, not sent
    assert smtp.messages == []

    (row,) = acks_json(path)
    assert row["state"] == "uncertain" and row["recipient"] == "ana@example.com"
    assert row["case_number"] == "000001" and row["attempts"] == 1
    assert "not sent again" in row["last_error"] and row["sent_at"] is None
    assert row["smtp_message_id"].endswith("@example.org>") and row["created_at"]
    assert row["subject"].startswith("[Case#000001]")
    text = cli("acks", "--config", str(path))
    assert text.returncode == 0 and "uncertain" in text.stdout and "ana@example.com" in text.stdout
    assert text.stdout.endswith("1 acknowledgement(s)\n")
    assert acks_json(path, "--state", "sent") == []

    resent = cli("acks", "resend", str(row["id"]), "--config", str(path))
    assert resent.returncode == 0 and "queued again (was uncertain)" in resent.stdout
    (pending,) = acks_json(path, "list")
    assert pending["state"] == "pending" and pending["next_attempt_at"] is not None
    assert "queued again by the operator" in pending["last_error"]
    assert smtp.messages == []  # a second process only queues it; the daemon's sender sends

    assert await deliver(config) == 1
    assert await deliver(config) == 0
    (received,) = smtp.messages
    assert received.rcpt_tos == ["ana@example.com"]
    assert received.message["Message-ID"] == row["smtp_message_id"]  # the same message
    assert db_rows(db, "SELECT state FROM outbox") == [("sent",)]
    assert acks_json(path) == []  # the default hides sent rows
    (sent,) = acks_json(path, "--state", "sent")
    assert sent["id"] == row["id"] and sent["sent_at"] and sent["smtp_reply"]

    again = cli("acks", "resend", str(row["id"]), "--json", "--config", str(path))
    assert again.returncode == 1
    (refused,) = json.loads(again.stdout)
    assert refused["id"] == row["id"] and refused["done"] is False
    assert "never sent twice" in refused["text"]
    assert await deliver(config) == 0
    assert len(smtp.messages) == 1


async def test_failed_ack_is_closed_and_other_states_are_refused(
    dovecot: DovecotSandbox, mailbox_user: str, tmp_path: Path, smtp: SmtpTestServer
) -> None:
    path = ack_config_file(dovecot, mailbox_user, tmp_path, smtp)
    config = load_config(path)
    db = config.store.path
    mails = [
        make_mail(1, sender="a@example.com"),
        make_mail(2, sender="b@example.com"),
        make_mail(3, sender="c@example.com"),
    ]
    await ingest(dovecot, mailbox_user, config, mails)
    smtp.fail_next_rcpt("550 5.1.1 no such user", count=2)
    await deliver(config)  # a and b fail, c is sent
    states = dict(db_rows(db, "SELECT recipient, state FROM outbox"))
    assert states == {"a@example.com": "failed", "b@example.com": "failed", "c@example.com": "sent"}
    ids = dict(db_rows(db, "SELECT recipient, id FROM outbox"))
    a, b, c = ids["a@example.com"], ids["b@example.com"], ids["c@example.com"]

    listed = acks_json(path)
    assert [(r["id"], r["state"]) for r in listed] == [(a, "failed"), (b, "failed")]
    assert "550" in listed[0]["last_error"]
    everything = acks_json(path, "--state", "all")
    assert [r["id"] for r in everything] == [a, b, c]
    assert [r["id"] for r in acks_json(path, "--state", "sent", "--state", "failed")] == [a, b, c]

    closed = cli("acks", "close", str(a), "--json", "--config", str(path))
    assert closed.returncode == 0
    assert json.loads(closed.stdout) == [
        {"id": a, "done": True, "text": f"acknowledgement {a} (case 000001, to a@example.com)"
         " closed (was failed): it will not be sent"}
    ]  # fmt: skip
    (row,) = acks_json(path, "--state", "closed")
    assert row["id"] == a and "closed by the operator" in row["last_error"]
    assert "550" in row["last_error"]  # the reason it failed is kept
    assert [r["id"] for r in acks_json(path)] == [a, b]  # closed rows are still listed

    twice = cli("acks", "close", str(a), "--config", str(path))
    assert twice.returncode == 1 and "already closed" in twice.stdout
    sent = cli("acks", "close", str(c), "--config", str(path))
    assert sent.returncode == 1 and "was sent at" in sent.stdout
    unknown = cli("acks", "resend", "999999", "--config", str(path))
    assert (unknown.returncode, unknown.stdout) == (1, "999999: no such acknowledgement\n")
    mixed = cli("acks", "resend", str(b), "999999", "--config", str(path))
    assert mixed.returncode == 1 and len(mixed.stdout.splitlines()) == 2  # b is queued anyway
    refused = cli("acks", "resend", str(b), "--config", str(path))  # now pending
    assert refused.returncode == 1 and "is pending" in refused.stdout

    # `run --once` sends the resent one, never the closed one.
    assert cli("run", "--once", "--config", str(path)).returncode == 0
    assert [m.rcpt_tos for m in smtp.messages] == [["c@example.com"], ["b@example.com"]]
    assert dict(db_rows(db, "SELECT id, state FROM outbox")) == {a: "closed", b: "sent", c: "sent"}
    assert cli("run", "--once", "--config", str(path)).returncode == 0
    assert len(smtp.messages) == 2


async def test_a_pending_ack_can_be_neither_resent_nor_closed(
    dovecot: DovecotSandbox, mailbox_user: str, tmp_path: Path, smtp: SmtpTestServer
) -> None:
    path = ack_config_file(dovecot, mailbox_user, tmp_path, smtp)
    config = load_config(path)
    await ingest(dovecot, mailbox_user, config, [make_mail(1)])
    (row,) = acks_json(path)
    assert row["state"] == "pending" and row["attempts"] == 0
    for action in ("resend", "close"):
        done = cli("acks", action, str(row["id"]), "--config", str(path))
        assert done.returncode == 1 and "is pending" in done.stdout, action
    assert db_rows(config.store.path, "SELECT state, last_error FROM outbox") == [("pending", None)]
