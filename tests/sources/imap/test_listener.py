"""The batching loop against a real Dovecot: triggers, backlog, move/delete, folders, TLS."""

from __future__ import annotations

import asyncio
import imaplib
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from devkit.dovecot import DovecotSandbox
from engage_listener.cases.engine import CaseEngine, EngineSettings
from engage_listener.clock import SystemClock
from engage_listener.config.model import Secret
from engage_listener.errors import AuthenticationError, FolderMissingError, TlsError
from engage_listener.service.build import build_listener
from engage_listener.sources.imap.listener import CONTROL_POLL, POLL_INTERVAL
from engage_listener.store.interface import MailKey
from tests.support.fakes import FakeClock
from tests.support.helpers import Harness, db_rows, eventually, listener_config, make_mail

NEW, DONE = "IMAP/New", "IMAP/Done"


async def test_backlog_at_startup_is_processed_and_moved(
    dovecot: DovecotSandbox, mailbox_user: str, db: Path
) -> None:
    dovecot.create_folder(mailbox_user, DONE)
    dovecot.append_many(mailbox_user, NEW, [make_mail(i) for i in range(7)])
    cfg = listener_config(dovecot, mailbox_user)
    async with Harness(cfg, db, FakeClock()) as h:
        assert h.listener is not None
        result = await h.listener.run_once()
    assert (result.found, result.ingested, result.done) == (7, 7, 7)
    assert dovecot.count(mailbox_user, NEW) == 0
    assert dovecot.count(mailbox_user, DONE) == 7
    subjects = sorted(r[0] for r in db_rows(db, "SELECT subject FROM cases"))
    assert subjects == sorted(f"Consulta {i}" for i in range(7))
    assert db_rows(db, "SELECT count(*) FROM ledger WHERE state = 'moved'") == [(7,)]


async def test_delete_mode_removes_processed_mail(
    dovecot: DovecotSandbox, mailbox_user: str, db: Path
) -> None:
    dovecot.append_many(mailbox_user, NEW, [make_mail(i) for i in range(3)])
    cfg = listener_config(dovecot, mailbox_user, output_folder=None)
    async with Harness(cfg, db, FakeClock()) as h:
        assert h.listener is not None
        await h.listener.run_once()
    assert dovecot.count(mailbox_user, NEW) == 0
    assert db_rows(db, "SELECT count(*), min(state) FROM ledger") == [(3, "deleted")]


async def test_count_trigger_fires_without_waiting(
    dovecot: DovecotSandbox, mailbox_user: str, db: Path
) -> None:
    dovecot.create_folder(mailbox_user, NEW)
    dovecot.create_folder(mailbox_user, DONE)
    cfg = listener_config(dovecot, mailbox_user, sync_max_changes_count=3)
    clock = FakeClock()  # never advanced: only the count can start the batch
    async with Harness(cfg, db, clock) as h:
        listener = await h.start()
        await eventually(lambda: listener.state == "idle", what="listener idle")
        dovecot.append_many(mailbox_user, NEW, [make_mail(i) for i in range(2)])
        await eventually(lambda: listener.pending == 2, what="2 pending changes")
        assert dovecot.count(mailbox_user, DONE) == 0
        dovecot.append(mailbox_user, NEW, make_mail(3))
        await eventually(lambda: dovecot.count(mailbox_user, DONE) == 3, what="batch by count")
    assert db_rows(db, "SELECT count(*) FROM cases") == [(3,)]


async def test_time_trigger_fires_with_fewer_mails(
    dovecot: DovecotSandbox, mailbox_user: str, db: Path
) -> None:
    dovecot.create_folder(mailbox_user, NEW)
    dovecot.create_folder(mailbox_user, DONE)
    cfg = listener_config(dovecot, mailbox_user, sync_max_changes_count=10, sync_max_wait_time=120)
    clock = FakeClock()
    async with Harness(cfg, db, clock) as h:
        listener = await h.start()
        await eventually(lambda: listener.state == "idle", what="listener idle")
        dovecot.append_many(mailbox_user, NEW, [make_mail(i) for i in range(2)])
        await eventually(
            lambda: listener.pending == 2 and clock.sleepers > 0, what="2 pending changes"
        )
        clock.advance(119)
        await asyncio.sleep(0.3)
        assert dovecot.count(mailbox_user, DONE) == 0, "batch started before the wait time"
        clock.advance(1)
        await eventually(lambda: dovecot.count(mailbox_user, DONE) == 2, what="batch by time")
        assert listener.batches == 2  # startup backlog (empty) + the timed one


async def test_folder_names_with_spaces_and_non_ascii(
    dovecot: DovecotSandbox, mailbox_user: str, db: Path
) -> None:
    src, dst = "Entrée clientes/Nuevo ñandú", "Atendidos & cerrados/日本"
    dovecot.create_folder(mailbox_user, dst)
    dovecot.append_many(mailbox_user, src, [make_mail(i) for i in range(2)])
    cfg = listener_config(dovecot, mailbox_user, input_folder=src, output_folder=dst)
    async with Harness(cfg, db, FakeClock()) as h:
        assert h.listener is not None
        await h.listener.run_once()
    assert dovecot.count(mailbox_user, src) == 0
    assert dovecot.count(mailbox_user, dst) == 2
    assert db_rows(db, "SELECT DISTINCT mailbox FROM ledger") == [(src,)]


@pytest.mark.parametrize("implicit", [True, False], ids=["imaps", "starttls"])
async def test_tls_with_the_servers_own_ca(
    dovecot: DovecotSandbox, mailbox_user: str, db: Path, implicit: bool
) -> None:
    dovecot.create_folder(mailbox_user, DONE)
    dovecot.append(mailbox_user, NEW, make_mail(1))
    port = dovecot.imaps_port if implicit else dovecot.imap_port
    cfg = listener_config(dovecot, mailbox_user, use_ssl=implicit, port=port)
    async with Harness(cfg, db, FakeClock()) as h:
        assert h.listener is not None
        session = await h.listener.connect()
        assert session.tls == ("implicit" if implicit else "starttls")
        await session.logout()
        await h.listener.run_once()
    assert dovecot.count(mailbox_user, DONE) == 1


async def test_untrusted_certificate_is_refused(
    dovecot: DovecotSandbox, mailbox_user: str, db: Path
) -> None:
    cfg = listener_config(
        dovecot, mailbox_user, use_ssl=True, port=dovecot.imaps_port, ca_file=None
    )
    async with Harness(cfg, db, FakeClock()) as h:
        assert h.listener is not None
        with pytest.raises(TlsError, match="not trusted"):
            await h.listener.run_once()


async def test_bad_password_and_missing_folder_are_permanent_errors(
    dovecot: DovecotSandbox, mailbox_user: str, db: Path
) -> None:
    bad = listener_config(dovecot, mailbox_user, password=Secret("wrong"))
    async with Harness(bad, db, FakeClock()) as h:
        assert h.listener is not None
        with pytest.raises(AuthenticationError, match="login refused") as info:
            await h.listener.run_once()
        assert "wrong" not in str(info.value)
    missing = listener_config(dovecot, mailbox_user, input_folder="No/Such")
    dovecot.create_folder(mailbox_user, DONE)
    async with Harness(missing, db, FakeClock()) as h:
        assert h.listener is not None
        with pytest.raises(FolderMissingError, match="No/Such"):
            await h.listener.run_once()


async def test_committed_mail_is_moved_without_a_second_case(
    dovecot: DovecotSandbox, mailbox_user: str, db: Path
) -> None:
    """A crash between commit and move: the next run only moves the mail on."""
    dovecot.create_folder(mailbox_user, DONE)
    dovecot.append(mailbox_user, NEW, make_mail(1))
    cfg = listener_config(dovecot, mailbox_user)
    async with Harness(cfg, db, FakeClock()) as h:
        assert h.listener is not None
        session = await h.listener.connect()
        folder = await session.select(NEW)
        (uid,) = await session.search_all()
        ((_, raw),) = await session.fetch_bodies([uid])
        await session.logout()
        engine = CaseEngine(h.store, EngineSettings(cfg.id, extract_attachments=False))
        await engine.ingest(MailKey(cfg.id, NEW, str(folder.uidvalidity), str(uid)), raw)
        result = await h.listener.run_once()
    assert (result.already_known, result.ingested, result.done) == (1, 0, 1)
    assert db_rows(db, "SELECT count(*) FROM cases") == [(1,)]
    assert dovecot.count(mailbox_user, DONE) == 1


async def test_same_message_id_different_mails_are_both_kept(
    dovecot: DovecotSandbox, mailbox_user: str, db: Path
) -> None:
    dovecot.create_folder(mailbox_user, DONE)
    mid = "<shared@example.com>"
    dovecot.append(mailbox_user, NEW, make_mail(1, message_id=mid, body="primero"))
    dovecot.append(mailbox_user, NEW, make_mail(2, message_id=mid, body="segundo"))
    cfg = listener_config(dovecot, mailbox_user)
    async with Harness(cfg, db, FakeClock()) as h:
        assert h.listener is not None
        await h.listener.run_once()
    assert db_rows(db, "SELECT count(*) FROM messages WHERE message_id = 'shared@example.com'") == [
        (2,)
    ]


async def test_same_mail_seen_again_under_new_uidvalidity_is_not_a_second_case(
    dovecot: DovecotSandbox, mailbox_user: str, db: Path
) -> None:
    """The folder is recreated (new UIDVALIDITY) with the very same mail in it."""
    dovecot.create_folder(mailbox_user, DONE)
    mail = make_mail(1)
    dovecot.append(mailbox_user, NEW, mail)
    cfg = listener_config(dovecot, mailbox_user, output_folder=None)
    async with Harness(cfg, db, FakeClock()) as h:
        assert h.listener is not None
        await h.listener.run_once()
        dovecot.delete_folder(mailbox_user, NEW)
        dovecot.append(mailbox_user, NEW, mail)
        result = await h.listener.run_once()
    assert result.ingested == 1
    assert db_rows(db, "SELECT count(*) FROM cases") == [(1,)]
    assert db_rows(db, "SELECT count(DISTINCT epoch), count(*) FROM ledger") == [(2, 2)]


@pytest.mark.dovecot  # starts a Dovecot of its own
async def test_server_without_idle_and_move_is_polled_and_copied(
    tmp_path: Path, mailbox_user: str, db: Path
) -> None:
    with DovecotSandbox(tmp_path / "plain", idle=False, move=False) as plain:
        plain.create_folder(mailbox_user, NEW)
        plain.create_folder(mailbox_user, DONE)
        plain.append(mailbox_user, NEW, make_mail(0))
        cfg = listener_config(plain, mailbox_user, sync_max_changes_count=2)
        clock = FakeClock()
        async with Harness(cfg, db, clock) as h:
            listener = await h.start()
            await eventually(lambda: plain.count(mailbox_user, DONE) == 1, what="backlog")
            await eventually(
                lambda: listener.state == "idle" and clock.sleepers > 0, what="polling"
            )
            plain.append_many(mailbox_user, NEW, [make_mail(1), make_mail(2)])
            clock.advance(POLL_INTERVAL)
            await eventually(lambda: plain.count(mailbox_user, DONE) == 3, what="polled batch")
        assert plain.count(mailbox_user, NEW) == 0


def _flag_deleted(
    sandbox: DovecotSandbox, user: str, folder: str, count: int, flag: str = "+FLAGS.SILENT"
) -> None:
    """Another client flags (or unflags) the first `count` mails \\Deleted, no expunge."""
    conn = imaplib.IMAP4(sandbox.host, sandbox.imap_port, timeout=10)
    try:
        conn.login(user, DovecotSandbox.PASSWORD)
        assert conn.select(f'"{folder}"')[0] == "OK"
        assert conn.store(f"1:{count}", flag, r"(\Deleted)")[0] == "OK"
    finally:
        conn.logout()


@pytest.mark.dovecot  # starts a Dovecot of its own
@pytest.mark.parametrize("foreign_deleted", [0, 1])
async def test_without_uidplus_other_clients_deleted_mail_is_never_expunged(
    tmp_path: Path, mailbox_user: str, db: Path, foreign_deleted: int
) -> None:
    user = mailbox_user
    with DovecotSandbox(tmp_path / "plain", move=False, uidplus=False) as plain:
        plain.create_folder(user, DONE)
        plain.append_many(user, NEW, [make_mail(i) for i in range(3)])
        if foreign_deleted:
            _flag_deleted(plain, user, NEW, foreign_deleted)  # another client's, not ours
        cfg = listener_config(plain, user)
        with capture_logs() as logs:
            async with Harness(cfg, db, FakeClock()) as h:
                listener = build_listener(cfg, h.store, h.clock, h.stop, None)
                first = await listener.run_once()
                second = await listener.run_once()
        ours = 3 - foreign_deleted
        assert (first.ingested, second.ingested, second.done) == (ours, 0, 0)
        assert plain.count(user, DONE) == ours  # copied once, never again
        # Expunged only when every \\Deleted mail was ours; else all stay, flagged.
        assert plain.count(user, NEW) == (0 if foreign_deleted == 0 else 3)
        flagged = [e for e in logs if e["event"] == "left_flagged_deleted"]
        assert [e["count"] for e in flagged] == ([] if foreign_deleted == 0 else [ours])
        if foreign_deleted:
            # The other client changes its mind: its mail is an ordinary one again. The
            # next batch takes it, and its EXPUNGE now also removes ours left flagged.
            _flag_deleted(plain, user, NEW, foreign_deleted, flag="-FLAGS.SILENT")
            async with Harness(cfg, db, FakeClock()) as h:
                third = await build_listener(cfg, h.store, h.clock, h.stop, None).run_once()
            assert (third.ingested, plain.count(user, DONE)) == (foreign_deleted, 3)
            assert plain.count(user, NEW) == 0


async def test_a_quiet_mailbox_still_counts_as_success(
    dovecot: DovecotSandbox, mailbox_user: str, db: Path, tmp_path: Path
) -> None:
    """/healthz and status age from last_success_at: an idle listener must renew it; and
    IDLE is re-issued (well before the server's 30 minutes) each CONTROL_POLL."""
    dovecot.create_folder(mailbox_user, NEW)
    dovecot.create_folder(mailbox_user, DONE)
    protolog = tmp_path / "imap.log"
    cfg = listener_config(dovecot, mailbox_user, protocol_log_file=str(protolog))
    clock = FakeClock()
    async with Harness(cfg, db, clock) as h:
        listener = await h.start()
        await eventually(lambda: listener.state == "idle" and clock.sleepers > 0, what="idle")
        before = listener.last_success_at
        assert before is not None
        await asyncio.sleep(0.05)
        clock.advance(CONTROL_POLL)  # one IDLE round ends with nothing new
        await eventually(lambda: (listener.last_success_at or 0) > before, what="renewed")
        assert listener.batches == 1 and listener.state == "idle"
        await eventually(lambda: protolog.read_text().count(" IDLE\n") >= 2, what="IDLE again")
        assert "DONE" in protolog.read_text()


async def test_reconnects_after_the_server_drops_the_connection(
    dovecot: DovecotSandbox, mailbox_user: str, db: Path
) -> None:
    dovecot.create_folder(mailbox_user, NEW)
    dovecot.create_folder(mailbox_user, DONE)
    cfg = listener_config(dovecot, mailbox_user, sync_max_changes_count=1)
    clock = FakeClock()
    async with Harness(cfg, db, clock) as h:
        listener = await h.start()
        await eventually(lambda: listener.state == "idle", what="idle")
        dovecot.kill_connections(mailbox_user)
        await eventually(lambda: listener.state == "backing off", what="backing off")
        dovecot.append(mailbox_user, NEW, make_mail(1))
        clock.advance(10)  # past the first back-off delay (at most 2 s)
        await eventually(lambda: dovecot.count(mailbox_user, DONE) == 1, what="after reconnect")


@pytest.mark.slow
async def test_long_responses_do_not_overflow_the_stack(
    dovecot: DovecotSandbox, mailbox_user: str, db: Path
) -> None:
    dovecot.append_many(mailbox_user, NEW, [make_mail(i) for i in range(2500)])
    cfg = listener_config(dovecot, mailbox_user)
    async with Harness(cfg, db, SystemClock()) as h:
        assert h.listener is not None
        session = await h.listener.connect()
        await session.select(NEW)
        uids = await session.search_all()
        sizes = await session.fetch_meta(uids)  # one response of 2500 lines
        await session.logout()
    assert len(sizes) == 2500


async def test_protocol_log_has_commands_but_never_the_password(
    dovecot: DovecotSandbox, mailbox_user: str, db: Path, tmp_path: Path
) -> None:
    dovecot.create_folder(mailbox_user, DONE)
    dovecot.append(mailbox_user, NEW, make_mail(1))
    (tmp_path / "logs").mkdir()
    pattern = str(tmp_path / "logs" / "IMAP-%listener%-%date%-%time%.log")
    cfg = listener_config(dovecot, mailbox_user, protocol_log_file=pattern)
    async with Harness(cfg, db, FakeClock()) as h:
        assert h.listener is not None
        await h.listener.run_once()
    (log,) = (tmp_path / "logs").glob("IMAP-Default-*.log")
    text = log.read_text()
    assert "LOGIN ***" in text and "UID MOVE" in text and "STARTTLS" in text
    assert DovecotSandbox.PASSWORD not in text
    assert "bytes of literal data" in text and "Hola, necesito ayuda" not in text
    assert oct(log.stat().st_mode & 0o777) == "0o600"


async def test_one_listener_failing_does_not_affect_another(
    dovecot: DovecotSandbox, mailbox_user: str, db: Path
) -> None:
    good_user, bad_user = mailbox_user, mailbox_user + "-b"
    dovecot.create_folder(good_user, DONE)
    dovecot.append_many(good_user, NEW, [make_mail(i) for i in range(3)])
    good = listener_config(dovecot, good_user, id="Good")
    bad = listener_config(dovecot, bad_user, id="Bad", input_folder="Missing")
    clock = FakeClock()
    async with Harness(good, db, clock) as h:
        bad_listener = build_listener(bad, h.store, clock, h.stop)
        bad_task = asyncio.create_task(bad_listener.run())
        await h.start()
        await eventually(lambda: dovecot.count(good_user, DONE) == 3, what="good listener")
        await eventually(lambda: bad_listener.state == "failing", what="bad listener failing")
        assert "Missing" in (bad_listener.last_error or "")
        h.stop.set()
        await asyncio.wait_for(bad_task, 10)
