"""Fault injection: kill -9 of the daemon, Dovecot restarted under it, the connection
cut mid-FETCH and mid-MOVE. In-process tests drive the real listener against Dovecot with a
FakeClock and advance it ("pump") to skip back-off delays; the kill -9 test runs the
daemon as a subprocess."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import imaplib
import random
import re
import signal
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from devkit.dovecot import DovecotSandbox
from engage_listener.observe.logs import get_logger
from engage_listener.outbox.delivery import OutboxSender
from engage_listener.outbox.smtp import send_message
from engage_listener.service.build import build_listener, endpoint_for
from engage_listener.sources.imap.listener import CONTROL_POLL
from engage_listener.sources.imap.session import ImapSession
from tests.support.acks import ack_config
from tests.support.config_xml import ack_xml, listener_xml, write_config
from tests.support.daemon import cli, start_daemon
from tests.support.fakes import FakeClock
from tests.support.faults import (
    CASE_TOKEN_RE,
    DONE,
    NEW,
    assert_exactly_once,
    assert_no_unexpected_errors,
    count_rows,
    errors,
    idle_with,
    mails,
    pump,
    running,
    seed,
)
from tests.support.fixtures import StartTcpProxy
from tests.support.helpers import Harness, db_rows, eventually, listener_config
from tests.support.servers.smtp_server import SmtpTestServer
from tests.support.servers.tcp_proxy import TcpProxy

# ----- 1. kill -9 at random points ------------------------------------------------------
TRIALS = 20
PER_TRIAL = 150


def _wait(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


def _batch_started(log: Path) -> bool:
    return log.exists() and re.search(rb'"event": ?"batch_start"', log.read_bytes()) is not None


@dataclass(frozen=True)
class KillPlan:
    """When to kill: `delay` seconds after the first batch_start, or at `cases` cases."""

    trial: int
    delay: float | None
    cases: int | None


def _kill_trial(
    dovecot: DovecotSandbox, smtp: SmtpTestServer, base: Path, user: str, plan: KillPlan
) -> str:
    """One daemon killed with SIGKILL, then `run --once`; returns where the kill landed."""
    tag, directory = f"k{plan.trial}", base / f"trial{plan.trial}"
    sent = mails(PER_TRIAL, tag)
    seed(dovecot, user, sent)
    directory.mkdir()
    xml = listener_xml(dovecot, user, inner=ack_xml(smtp.port, MaxPerRecipientPerHour="100"))
    config = write_config(directory / "el.xml", xml)
    db, log = directory / "store.sqlite3", directory / "daemon.log"
    daemon = start_daemon(config, log)
    try:
        _wait(lambda: _batch_started(log), 30, "batch_start")
        if plan.delay is not None:
            time.sleep(plan.delay)
        if plan.cases is not None:
            target = plan.cases
            _wait(lambda: count_rows(db, "cases") >= target, 30, f"{target} cases")
    finally:
        daemon.send_signal(signal.SIGKILL)
        daemon.wait(10)
    cases, moved = count_rows(db, "cases"), dovecot.count(user, DONE)
    phase = (
        "before the first commit"
        if cases == 0
        else "mid-batch"
        if cases < PER_TRIAL
        else "while moving"
        if moved < PER_TRIAL
        else "after the batch"
    )

    result = cli("run", "--once", "--config", str(config), timeout=120)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    try:
        assert_exactly_once(dovecot, user, db, sent)
    except AssertionError as exc:
        notable = [
            line
            for line in result.stdout.splitlines()
            if '"event": "message"' not in line and '"event": "ack_sent"' not in line
        ]
        raise AssertionError(
            f"trial {plan.trial}, killed {phase}: {exc}\n" + "\n".join(notable)
        ) from exc

    # Acknowledgements: one outbox row per case, never two copies to a customer. Rows
    # still pending were never handed to the server (the rest are sent by later runs).
    rows = db_rows(db, "SELECT case_id, recipient, state, smtp_message_id FROM outbox")
    assert len(rows) == PER_TRIAL and len({r[0] for r in rows}) == PER_TRIAL
    received = [m for m in smtp.messages if m.rcpt_tos[0].startswith(f"{tag}.")]
    per_case = collections.Counter(
        (m.rcpt_tos[0], CASE_TOKEN_RE.search(str(m.message["Subject"])).group(1))  # type: ignore[union-attr]
        for m in received
    )
    twice = {key: n for key, n in per_case.items() if n > 1}
    assert not twice, f"{phase}: acknowledged more than once: {twice}"
    by_id = collections.Counter(str(m.message["Message-ID"]) for m in received)
    assert set(by_id) <= {r[3] for r in rows}
    limits = {"sent": (1, 1), "uncertain": (0, 1), "pending": (0, 0)}
    for _, recipient, state, smtp_id in rows:
        low, high = limits[state]  # never "failed" here
        assert low <= by_id[smtp_id] <= high, (phase, recipient, state, by_id[smtp_id])
    return phase


@pytest.mark.slow
@pytest.mark.timeout(170)
@pytest.mark.smtp("plain", auth=False)
def test_kill_9_at_random_points_loses_and_duplicates_nothing(
    dovecot: DovecotSandbox, mailbox_user: str, tmp_path: Path, smtp: SmtpTestServer
) -> None:
    rng = random.Random(1234)
    plans = [
        KillPlan(t, rng.uniform(0.0, 0.8), None)
        if t % 2 == 0
        else KillPlan(t, None, rng.randint(1, PER_TRIAL - 1))
        for t in range(TRIALS)
    ]
    with ThreadPoolExecutor(2) as pool:  # two trials at a time: each is mostly waiting
        phases = collections.Counter(
            pool.map(
                lambda plan: _kill_trial(
                    dovecot, smtp, tmp_path, f"{mailbox_user}-{plan.trial}", plan
                ),
                plans,
            )
        )
    # The kills must really land inside batches (after batch_start, before the last
    # move), not only after them.
    assert TRIALS - phases["after the batch"] >= TRIALS // 2, phases


@pytest.mark.smtp("plain", auth=False)
async def test_acks_queued_while_the_sender_is_busy_do_not_wait_for_the_poll(
    dovecot: DovecotSandbox, mailbox_user: str, tmp_path: Path, smtp: SmtpTestServer
) -> None:
    user, db = mailbox_user, tmp_path / "store.sqlite3"
    seed(dovecot, user, mails(150, "aq"))
    cfg = listener_config(
        dovecot, user, acknowledgement=ack_config(smtp, max_per_recipient_per_hour=100)
    )
    async with Harness(cfg, db, FakeClock()) as h:
        wake = asyncio.Event()
        listener = build_listener(cfg, h.store, h.clock, h.stop, None, wake)
        sender = OutboxSender(
            h.store, {cfg.id: smtp.endpoint()}, send_message, wake=wake, stop=h.stop,
            log=get_logger(),
        )  # fmt: skip
        tasks = [asyncio.create_task(listener.run()), asyncio.create_task(sender.run())]
        try:
            await eventually(idle_with(listener, db, 150), timeout=30, what="batch done")
            sent = -1
            for _ in range(20):  # until nothing more is sent for a second
                if len(smtp.messages) == sent:
                    break
                sent = len(smtp.messages)
                await asyncio.sleep(1.0)
        finally:
            h.stop.set()
            await asyncio.wait_for(asyncio.gather(*tasks), 15)
    pending = db_rows(db, "SELECT count(*) FROM outbox WHERE state = 'pending'")
    assert (len(smtp.messages), pending) == (150, [(0,)])


# ----- 2. Dovecot restarted under the daemon ---------------------------------------
def test_sandbox_stop_drops_open_sessions(own_dovecot: DovecotSandbox, mailbox_user: str) -> None:
    own_dovecot.create_folder(mailbox_user, NEW)
    conn = imaplib.IMAP4(own_dovecot.host, own_dovecot.imap_port, timeout=5)
    try:
        conn.login(mailbox_user, DovecotSandbox.PASSWORD)
        assert conn.select(f'"{NEW}"')[0] == "OK"
        own_dovecot.stop()
        with pytest.raises((imaplib.IMAP4.abort, OSError)):
            conn.noop()
    finally:
        with contextlib.suppress(imaplib.IMAP4.error, OSError):
            conn.logout()


async def test_dovecot_restart_while_idle(
    own_dovecot: DovecotSandbox, mailbox_user: str, tmp_path: Path
) -> None:
    dc, user, db, clock = own_dovecot, mailbox_user, tmp_path / "store.sqlite3", FakeClock()
    first, later = mails(3, "ri1"), mails(4, "ri2")
    seed(dc, user, first)
    cfg = listener_config(dc, user, sync_max_changes_count=4)
    with capture_logs() as logs:
        async with running(cfg, db, clock) as (_, listener):
            await eventually(idle_with(listener, db, 3), what="backlog done, idle")
            await asyncio.to_thread(dc.restart)
            await eventually(lambda: listener.state == "backing off", what="backing off")
            dc.append_many(user, NEW, later)
            await pump(clock, idle_with(listener, db, 7), what="reconnected, 7 cases")
    first_error = errors(logs)[0]
    assert first_error["kind"] == "transient" and first_error["failures"] == 1
    assert 1.0 <= first_error["retry_in"] <= 2.0
    assert_no_unexpected_errors(logs)
    assert_exactly_once(dc, user, db, first + later)


@pytest.mark.slow
async def test_dovecot_restart_while_fetching(
    own_dovecot: DovecotSandbox, mailbox_user: str, tmp_path: Path
) -> None:
    dc, user, db, clock = own_dovecot, mailbox_user, tmp_path / "store.sqlite3", FakeClock()
    sent = mails(1000, "rf")
    seed(dc, user, sent)
    cfg = listener_config(dc, user)
    with capture_logs() as logs:
        async with running(cfg, db, clock) as (_, listener):
            await eventually(lambda: count_rows(db, "cases") >= 50, timeout=30, what="50 cases")
            assert listener.state == "processing", "the batch ended before the restart"
            await asyncio.to_thread(dc.restart)  # its first step drops every session
            await pump(clock, idle_with(listener, db, len(sent)), timeout=60, what="all cases")
    assert any(e["kind"] == "transient" for e in errors(logs))
    assert_no_unexpected_errors(logs)
    assert_exactly_once(dc, user, db, sent)


# ----- 3. the connection cut mid-FETCH and mid-MOVE -----------------------------------
CUTS: dict[str, Callable[[TcpProxy], None]] = {
    # the second body FETCH cut mid-literal: the first 100 mails are committed, not moved
    "mid-fetch": lambda p: p.cut_on_client(b"BODY.PEEK[]", nth=2, after_server_bytes=20_000),
    "first-fetch": lambda p: p.cut_on_client(b"BODY.PEEK[]", after_server_bytes=3_000),
    # wherever the 40 000th byte from the server falls (the first chunk of bodies)
    "after-40kB": lambda p: p.cut_after_server_bytes(40_000),
    # the server runs the MOVE, the client never hears back
    "move-reply-lost": lambda p: p.cut_on_client(b"UID MOVE"),
    # the MOVE never reaches the server
    "move-not-sent": lambda p: p.cut_on_client(b"UID MOVE", forward=False),
}


@pytest.mark.parametrize("cut", sorted(CUTS))
async def test_connection_cut(
    tcp_proxy: StartTcpProxy, dovecot: DovecotSandbox, mailbox_user: str, tmp_path: Path, cut: str
) -> None:
    user, db, clock = mailbox_user, tmp_path / "store.sqlite3", FakeClock()
    sent = mails(200, "cut")
    seed(dovecot, user, sent)
    # The proxy hides STARTTLS, so the listener stays in clear text and the proxy can
    # see the commands it cuts on.
    proxy = tcp_proxy(dovecot.host, dovecot.imap_port, strip_starttls=True)
    CUTS[cut](proxy)
    cfg = listener_config(dovecot, user, port=proxy.port, allow_plaintext_login=True)
    with capture_logs() as logs:
        async with running(cfg, db, clock) as (_, listener):
            await pump(
                clock,
                lambda: (
                    proxy.cuts == 1
                    and proxy.connections >= 2
                    and idle_with(listener, db, len(sent))()
                ),
                what="cut, reconnected, all cases",
            )
    assert any(e["error_type"] == "ConnectionLostError" for e in errors(logs))
    assert_no_unexpected_errors(logs)
    assert_exactly_once(dovecot, user, db, sent)


async def test_a_silent_dead_peer_is_noticed_and_replaced(
    tcp_proxy: StartTcpProxy, dovecot: DovecotSandbox, mailbox_user: str, tmp_path: Path
) -> None:
    """No FIN, no RST, nothing: the next IDLE round's DONE gets no answer within the
    command timeout, the session is dropped and a new one takes the new mail."""
    user, db, clock = mailbox_user, tmp_path / "store.sqlite3", FakeClock()
    first, later = mails(2, "dp1"), mails(3, "dp2")
    seed(dovecot, user, first)
    proxy = tcp_proxy(dovecot.host, dovecot.imap_port, strip_starttls=True)
    cfg = listener_config(
        dovecot, user, port=proxy.port, sync_max_changes_count=3, allow_plaintext_login=True
    )
    async with Harness(cfg, db, clock) as h:
        endpoint = dataclasses.replace(endpoint_for(cfg), timeout=2.0)

        async def connect() -> ImapSession:
            return await ImapSession.open(endpoint)

        listener = build_listener(cfg, h.store, clock, h.stop)
        listener.connect = connect  # the same listener, with a short command timeout
        with capture_logs() as logs:
            task = asyncio.create_task(listener.run())
            try:
                await eventually(idle_with(listener, db, 2), what="backlog done, idle")
                proxy.freeze_all()
                dovecot.append_many(user, NEW, later)  # pushed into the void
                clock.advance(CONTROL_POLL)  # the IDLE round ends: DONE, no answer
                await pump(clock, idle_with(listener, db, 5), what="new session, 5 cases")
            finally:
                h.stop.set()
                await asyncio.wait_for(task, 15)
    lost = [e for e in errors(logs) if e["error_type"] == "ConnectionLostError"]
    assert lost and "timed out after 2 s" in lost[0]["error"], errors(logs)
    assert proxy.connections >= 2
    assert_exactly_once(dovecot, user, db, first + later)
