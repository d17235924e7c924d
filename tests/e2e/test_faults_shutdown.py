"""Fault injection: SIGTERM or SIGINT in the middle of a batch, with a routing procedure
that takes its time on every mail and acknowledgements going to an SMTP server that never
answers. One shutdown budget covers the listeners and the acknowledgement sender: the
daemon exits 0 within 10 s, and after a restart every mail is in the output folder once.
"""

from __future__ import annotations

import signal
import socket
import time
from pathlib import Path

import pytest

from devkit.dovecot import DovecotSandbox
from tests.support.config_xml import ack_xml, listener_xml, write_config
from tests.support.daemon import cli, events, start_daemon, wait_for
from tests.support.faults import assert_exactly_once, count_rows, mails, seed

# The routing procedure counts to `limit` for every mail: 300,000 takes ~10-30 ms (a batch
# of 300 lasts seconds), 10**9 minutes (a listener stuck in the store's thread until it is
# cancelled). The routing timeout is far longer than the shutdown budget.
SLOW_SQL = (
    "UPDATE cases SET inbox = 'General' || (\n"
    "  WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {limit})\n"
    "  SELECT substr(count(*), 1, 0) FROM n\n"
    ") WHERE id = :case_id;\n"
)
CASES = {
    "SIGINT, slow mails": (signal.SIGINT, 300_000),
    "SIGTERM, stuck mail": (signal.SIGTERM, 10**9),
}


def _silent_smtp() -> socket.socket:
    """A port that accepts connections (the kernel's backlog) and never says a word."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(100)
    return server


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES))
def test_signal_mid_batch_exits_0_within_10_s_and_loses_nothing(
    dovecot: DovecotSandbox, mailbox_user: str, tmp_path: Path, case: str
) -> None:
    sig, limit = CASES[case]
    user, db, log = mailbox_user, tmp_path / "store.sqlite3", tmp_path / "daemon.log"
    sent = mails(300, f"sd{sig.value}")
    seed(dovecot, user, sent)
    (tmp_path / "route.sql").write_text(SLOW_SQL.format(limit=limit))
    base = listener_xml(dovecot, user, RoutingHook="sql:route.sql", RoutingTimeout="300")
    with _silent_smtp() as smtp:
        with_ack = listener_xml(
            dovecot,
            user,
            inner=ack_xml(smtp.getsockname()[1]),
            RoutingHook="sql:route.sql",
            RoutingTimeout="300",
        )
        config = write_config(tmp_path / "el.xml", with_ack)
        daemon = start_daemon(config, log)
        try:
            if limit < 10**9:
                wait_for(lambda: count_rows(db, "cases") >= 1, 60, "the first cases")
            else:
                wait_for(lambda: "batch_start" in log.read_text(), 60, "the batch")
                time.sleep(0.5)  # inside the first mail's routing procedure
            started = time.monotonic()
            daemon.send_signal(sig)
            assert daemon.wait(10) == 0
            assert time.monotonic() - started < 10
        finally:
            if daemon.poll() is None:
                daemon.kill()
    assert count_rows(db, "cases") < len(sent), "the batch ended before the signal"
    names = [e["event"] for e in events(log)]
    assert names[-1] == "stopped" and "Traceback" not in log.read_text()

    # Restarted (a quick procedure, no acknowledgements): nothing lost or doubled.
    (tmp_path / "route.sql").write_text(SLOW_SQL.format(limit=1))
    write_config(config, base)
    again = cli("run", "--once", "--config", str(config), timeout=300)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    assert_exactly_once(dovecot, user, db, sent)
