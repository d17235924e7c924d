"""Issue 18.2 end to end: mail read from the real Dovecot opens a case, the operator closes
it with `cases close`, a reply reopens it within ReopenDays (from the XML), and a reply
after ReopenDays opens a new case related to it, shown by `cases show`."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from pathlib import Path
from typing import Any

from devkit.dovecot import DovecotSandbox
from engage_listener.config.load import load_config
from engage_listener.store.sqlite.store import SqliteStore
from tests.support.config_xml import DONE, NEW, listener_xml, write_config
from tests.support.daemon import cli
from tests.support.fakes import FakeClock
from tests.support.helpers import Harness, make_mail


async def _take(config: Path, dovecot: DovecotSandbox, user: str, mail: bytes) -> None:
    dovecot.append(user, NEW, mail)
    (cfg,) = load_config(config).imap_listeners
    async with Harness(cfg, config.parent / "store.sqlite3", FakeClock()) as h:
        assert h.listener is not None
        result = await h.listener.run_once()
    assert (result.ingested, result.failed) == (1, 0)


async def _cli_json(*args: str) -> Any:
    done = await asyncio.to_thread(cli, *args, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


async def test_close_reopen_and_a_late_reply_through_imap(
    dovecot: DovecotSandbox, mailbox_user: str, tmp_path: Path
) -> None:
    dovecot.create_folder(mailbox_user, DONE)
    config = write_config(tmp_path / "el.xml", listener_xml(dovecot, mailbox_user, ReopenDays="3"))
    c = ["--config", str(config)]
    await _take(config, dovecot, mailbox_user, make_mail(1, message_id="<hilo@cliente.example>"))
    [closed] = await _cli_json("cases", "close", "1", "--reason", "resuelto", *c)
    assert (closed["done"], closed["status"]) == (True, "closed")
    reply = make_mail(2, subject="Re: sigue igual").replace(
        b"MIME-Version", b"In-Reply-To: <hilo@cliente.example>\r\nMIME-Version"
    )
    await _take(config, dovecot, mailbox_user, reply)
    shown = await _cli_json("cases", "show", "1", *c)
    assert (shown["status"], len(shown["messages"])) == ("open", 2)
    assert shown["reopened_at"] and shown["closed_at"] is None

    # Closed 4 days ago (more than ReopenDays 3): the next reply opens a related case.
    await _cli_json("cases", "close", "1", *c)
    long_ago = (dt.datetime.now(dt.UTC) - dt.timedelta(days=4)).isoformat(timespec="seconds")
    store = SqliteStore(tmp_path / "store.sqlite3")
    await store.open()
    try:
        async with store.transaction() as tx:
            assert await tx.reopen_case(1, long_ago) and await tx.close_case(1, "viejo", long_ago)
    finally:
        await store.close()
    late = make_mail(3, subject="Re: otra vez").replace(
        b"MIME-Version", b"In-Reply-To: <hilo@cliente.example>\r\nMIME-Version"
    )
    await _take(config, dovecot, mailbox_user, late)
    cases = await _cli_json("cases", *c)
    assert [(x["id"], x["status"], x["related_case_id"]) for x in cases] == [
        (1, "closed", None),
        (2, "open", 1),
    ]
    old = await _cli_json("cases", "show", "1", *c)
    assert [r["id"] for r in old["related_cases"]] == [2] and len(old["messages"]) == 2
