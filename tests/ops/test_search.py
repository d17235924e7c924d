"""`engage-listener search` asks the server, and says which mails are in a case."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

from devkit.dovecot import DovecotSandbox
from tests.support.config_xml import listener_xml, write_config
from tests.support.daemon import cli
from tests.support.helpers import make_mail


def test_search_by_sender_subject_and_dates(
    dovecot: DovecotSandbox, mailbox_user: str, tmp_path: Path
) -> None:
    dovecot.create_folder(mailbox_user, "IMAP/Done")
    old = dt.datetime.now(dt.UTC) - dt.timedelta(days=40)
    dovecot.append(
        mailbox_user, "IMAP/New", make_mail(1, sender="ana@x.example", subject="Factura de marzo")
    )
    config = write_config(tmp_path / "el.xml", listener_xml(dovecot, mailbox_user))
    assert cli("run", "--once", "--config", str(config)).returncode == 0  # now in a case
    dovecot.append(
        mailbox_user,
        "IMAP/Done",
        make_mail(2, sender="ana@x.example", subject="Otra factura"),
        date=old,
    )
    dovecot.append(
        mailbox_user, "IMAP/Done", make_mail(3, sender="luis@y.example", subject="Envío atrasado")
    )
    found = json.loads(
        cli(
            "search",
            "Default",
            "--folder",
            "IMAP/Done",
            "--from",
            "ana@x.example",
            "--json",
            "--config",
            str(config),
        ).stdout
    )
    assert [(h["subject"], h["in_case"]) for h in found] == [
        ("Factura de marzo", True),
        ("Otra factura", False),
    ]
    recent = json.loads(
        cli(
            "search",
            "Default",
            "--folder",
            "IMAP/Done",
            "--since",
            (dt.date.today() - dt.timedelta(days=2)).isoformat(),
            "--json",
            "--config",
            str(config),
        ).stdout
    )
    assert sorted(h["subject"] for h in recent) == ["Envío atrasado", "Factura de marzo"]
    accented = json.loads(
        cli(
            "search",
            "Default",
            "--folder",
            "IMAP/Done",
            "--subject",
            "envío",
            "--json",
            "--config",
            str(config),
        ).stdout
    )
    assert [h["sender"] for h in accented] == ["luis@y.example"]
    text = cli(
        "search", "Default", "--folder", "IMAP/Done", "--limit", "1", "--config", str(config)
    ).stdout
    assert "1 mail(s) in IMAP/Done" in text
    assert all(h["size"] > 0 and h["received"] for h in found)
