"""RequireApproval: new cases wait for a supervisor before routing and acknowledgement."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from devkit.dovecot import DovecotSandbox
from tests.support.config_xml import ack_xml, listener_xml, write_config
from tests.support.daemon import cli
from tests.support.helpers import db_rows, make_mail
from tests.support.paths import REPO
from tests.support.servers.smtp_server import SmtpTestServer

EXAMPLE_SQL = REPO / "examples" / "routing" / "pa_sys_msg_in.sql"


@pytest.mark.slow
@pytest.mark.smtp("plain", auth=False)
def test_pending_cases_are_routed_and_acknowledged_only_when_approved(
    dovecot: DovecotSandbox, mailbox_user: str, tmp_path: Path, smtp: SmtpTestServer
) -> None:
    xml = listener_xml(
        dovecot,
        mailbox_user,
        inner=ack_xml(smtp.port),
        RequireApproval="True",
        RoutingHook=f"sql:{EXAMPLE_SQL}",
    )
    config = write_config(tmp_path / "el.xml", xml)
    dovecot.create_folder(mailbox_user, "IMAP/Done")
    dovecot.append_many(
        mailbox_user,
        "IMAP/New",
        [
            make_mail(1, sender="a@example.com", subject="Factura vencida"),
            make_mail(2, sender="b@example.com", subject="Reclamo por demora"),
            make_mail(3, sender="a@example.com", subject="RE: Factura vencida"),
            make_mail(4, sender="c@example.com", subject="Pago con tarjeta"),
        ],
    )
    assert cli("run", "--once", "--config", str(config)).returncode == 0
    pending = json.loads(cli("cases", "--pending", "--json", "--config", str(config)).stdout)
    assert [(c["subject"], c["inbox"], c["messages"]) for c in pending] == [
        ("Factura vencida", None, 2),
        ("Reclamo por demora", None, 1),
        ("Pago con tarjeta", None, 1),
    ]
    assert smtp.messages == []
    first, second, third = (c["id"] for c in pending)
    approved = cli("approve", str(first), "--config", str(config))
    assert approved.returncode == 0 and "approved" in approved.stdout
    rejected = cli("reject", str(second), "--config", str(config))
    assert rejected.returncode == 0 and "rejected" in rejected.stdout
    # A case that is no longer pending, or does not exist, is a failure (exit 1),
    # even when its line mentions "rejected" or "approved".
    again = cli("approve", str(second), "--config", str(config))
    assert (again.returncode, again.stdout) == (
        1,
        f"case {pending[1]['case_number']} is rejected, not pending-approval\n",
    )
    undo = cli("reject", str(first), "--config", str(config))
    assert undo.returncode == 1 and "is open, not pending-approval" in undo.stdout
    unknown = cli("approve", "999999", "--config", str(config))
    assert (unknown.returncode, unknown.stdout) == (1, "999999: no such case\n")
    mixed = cli("reject", str(first), "999999", "--config", str(config))
    assert mixed.returncode == 1 and len(mixed.stdout.splitlines()) == 2
    # --json: one object a case id, in order; the exit codes are the same.
    approved_json = cli("approve", str(third), "--json", "--config", str(config))
    assert approved_json.returncode == 0
    (decision,) = json.loads(approved_json.stdout)
    assert (decision["case_id"], decision["done"]) == (third, True)
    assert decision["text"].startswith(f"case {pending[2]['case_number']} approved")
    assert list(decision) == ["case_id", "done", "text"]
    mixed_json = cli("reject", str(third), "999999", "--json", "--config", str(config))
    assert mixed_json.returncode == 1
    assert json.loads(mixed_json.stdout) == [
        {
            "case_id": third,
            "done": False,
            "text": f"case {pending[2]['case_number']} is open, not pending-approval",
        },
        {"case_id": 999999, "done": False, "text": "999999: no such case"},
    ]
    assert cli("run", "--once", "--config", str(config)).returncode == 0  # delivers the ack
    db = tmp_path / "store.sqlite3"
    assert db_rows(db, "SELECT subject, status, inbox FROM cases ORDER BY id") == [
        ("Factura vencida", "open", "Facturacion"),
        ("Reclamo por demora", "rejected", None),
        ("Pago con tarjeta", "open", "Facturacion"),
    ]
    assert sorted(m.rcpt_tos[0] for m in smtp.messages) == ["a@example.com", "c@example.com"]
    assert cli("cases", "--pending", "--json", "--config", str(config)).stdout.strip() == "[]"
