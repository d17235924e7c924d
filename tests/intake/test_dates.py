"""ReadFromDate, reset to a past date, pause until a future date, resume."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

from devkit.dovecot import DovecotSandbox
from engage_listener.intake.control import request_date, resume, start_of_day
from engage_listener.sources.imap.listener import CONTROL_POLL
from tests.support.config_xml import listener_xml, write_config
from tests.support.daemon import cli
from tests.support.fakes import FakeClock
from tests.support.helpers import Harness, db_rows, eventually, listener_config, make_mail

NEW, DONE = "IMAP/New", "IMAP/Done"
UTC = dt.UTC


def days_ago(n: int) -> dt.datetime:
    return dt.datetime.now(UTC) - dt.timedelta(days=n)


async def test_mail_older_than_read_from_date_is_never_read(
    dovecot: DovecotSandbox, mailbox_user: str, tmp_path: Path
) -> None:
    dovecot.create_folder(mailbox_user, DONE)
    dovecot.append(mailbox_user, NEW, make_mail(1, subject="vieja"), date=days_ago(10))
    dovecot.append(mailbox_user, NEW, make_mail(2, subject="nueva"), date=days_ago(1))
    cfg = listener_config(dovecot, mailbox_user, read_from_date=days_ago(3).date())
    cfg_read_from = start_of_day(days_ago(3).date(), "UTC")
    assert cfg.read_from_date is not None
    async with Harness(cfg, tmp_path / "s.sqlite3", FakeClock()) as h:
        assert h.listener is not None
        assert h.listener.settings.read_from == cfg_read_from
        first = await h.listener.run_once()
        second = await h.listener.run_once()
    assert (first.ingested, first.too_old, second.ingested, second.too_old) == (1, 1, 0, 1)
    assert db_rows(tmp_path / "s.sqlite3", "SELECT subject FROM cases") == [("nueva",)]
    assert dovecot.count(mailbox_user, NEW) == 1  # left where it is


async def test_reset_to_a_past_date_ingests_exactly_what_the_ledger_lacks(
    dovecot: DovecotSandbox, mailbox_user: str, tmp_path: Path
) -> None:
    db = tmp_path / "s.sqlite3"
    dovecot.create_folder(mailbox_user, DONE)
    dovecot.append_many(mailbox_user, NEW, [make_mail(i) for i in range(3)])
    cfg = listener_config(dovecot, mailbox_user)
    async with Harness(cfg, db, FakeClock()) as h:
        assert h.listener is not None
        await h.listener.run_once()
        # Mail that reached the output folder without a case, one of them from long ago.
        dovecot.append(mailbox_user, DONE, make_mail(10, subject="movida a mano"))
        dovecot.append(mailbox_user, DONE, make_mail(11, subject="antigua"), date=days_ago(30))
        dovecot.append(mailbox_user, NEW, make_mail(12, subject="en entrada"), date=days_ago(20))
        message = await request_date(
            h.store, cfg.id, days_ago(2).date(), "UTC", dt.datetime.now(UTC)
        )
        assert "re-examined" in message
        await h.listener.run_once()
        await h.listener.run_once()  # the reset is done once
    subjects = sorted(s for (s,) in db_rows(db, "SELECT subject FROM cases"))
    assert subjects == sorted(
        ["Consulta 0", "Consulta 1", "Consulta 2", "movida a mano", "en entrada"]
    )
    assert dovecot.count(mailbox_user, DONE) == 6  # nothing moved out of the output folder
    assert db_rows(db, "SELECT reset_from FROM listener_control") == [(None,)]


async def test_pause_until_a_future_date_then_intake_resumes_by_itself(
    dovecot: DovecotSandbox, mailbox_user: str, tmp_path: Path
) -> None:
    dovecot.create_folder(mailbox_user, NEW)
    dovecot.create_folder(mailbox_user, DONE)
    cfg = listener_config(dovecot, mailbox_user, sync_max_changes_count=1)
    clock = FakeClock()
    async with Harness(cfg, tmp_path / "s.sqlite3", clock) as h:
        tomorrow = (clock.wall() + dt.timedelta(days=1)).date()
        await request_date(h.store, cfg.id, tomorrow, "UTC", clock.wall())
        listener = await h.start()
        await eventually(lambda: listener.state == "paused" and clock.sleepers > 0, what="pause")
        dovecot.append(mailbox_user, NEW, make_mail(1))
        clock.advance(120)
        await eventually(lambda: clock.sleepers > 0, what="still paused")
        assert dovecot.count(mailbox_user, DONE) == 0
        clock.advance(2 * 86400)  # past 00:00 of that day
        await eventually(lambda: dovecot.count(mailbox_user, DONE) == 1, what="resumed")


async def test_resume_ends_a_pause_early(
    dovecot: DovecotSandbox, mailbox_user: str, tmp_path: Path
) -> None:
    dovecot.create_folder(mailbox_user, DONE)
    dovecot.append(mailbox_user, NEW, make_mail(1))
    cfg = listener_config(dovecot, mailbox_user)
    clock = FakeClock()
    async with Harness(cfg, tmp_path / "s.sqlite3", clock) as h:
        await request_date(
            h.store, cfg.id, (clock.wall() + dt.timedelta(days=5)).date(), "UTC", clock.wall()
        )
        listener = await h.start()
        await eventually(lambda: listener.state == "paused" and clock.sleepers > 0, what="pause")
        assert "resumed" in await resume(h.store, cfg.id)
        clock.advance(61)
        await eventually(lambda: dovecot.count(mailbox_user, DONE) == 1, what="after resume")


def test_reset_and_resume_commands(tmp_path: Path, dovecot: DovecotSandbox) -> None:
    config = write_config(
        tmp_path / "el.xml", listener_xml(dovecot, "u", TimeZone="America/Santiago")
    )
    future = (dt.date.today() + dt.timedelta(days=3)).isoformat()
    run = [sys.executable, "-m", "engage_listener"]
    paused = subprocess.run(
        [*run, "reset", "Default", "--date", future, "--config", str(config)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert paused.returncode == 0 and "paused until" in paused.stdout
    assert "T00:00:00-03:00" in paused.stdout or "T00:00:00-04:00" in paused.stdout
    resumed = subprocess.run(
        [*run, "resume", "Default", "--config", str(config)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert resumed.returncode == 0 and "resumed" in resumed.stdout
    missing = subprocess.run(
        [*run, "resume", "Nope", "--config", str(config)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert missing.returncode == 1 and "no listener 'Nope'" in missing.stderr


def test_reset_and_resume_commands_print_json_with_json(
    tmp_path: Path, dovecot: DovecotSandbox
) -> None:
    config = write_config(
        tmp_path / "el.xml", listener_xml(dovecot, "u", TimeZone="America/Santiago")
    )
    db = tmp_path / "store.sqlite3"
    run = [sys.executable, "-m", "engage_listener"]

    def json_of(*args: str) -> dict[str, object]:
        done = subprocess.run(
            [*run, *args, "--json", "--config", str(config)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        value: dict[str, object] = json.loads(done.stdout)
        return value

    future = dt.date.today() + dt.timedelta(days=3)
    paused = json_of("reset", "Default", "--date", future.isoformat())
    assert list(paused) == ["listener", "action", "date", "time", "message"]
    assert (paused["listener"], paused["action"], paused["date"]) == (
        "Default",
        "pause",
        future.isoformat(),
    )
    until = str(paused["time"])
    assert until.startswith(f"{future.isoformat()}T00:00:00-0")  # Santiago: -03:00 or -04:00
    assert paused["message"] == f"Default: intake paused until {until}"
    assert db_rows(db, "SELECT paused_until FROM listener_control") == [(until,)]

    resumed = json_of("resume", "Default")
    assert resumed == {
        "listener": "Default",
        "action": "resume",
        "date": None,
        "time": None,
        "message": "Default: intake resumed",
    }
    assert db_rows(db, "SELECT paused_until FROM listener_control") == [(None,)]

    past = dt.date.today() - dt.timedelta(days=2)
    reset = json_of("reset", "Default", "--date", past.isoformat())
    assert (reset["action"], reset["date"]) == ("reset", past.isoformat())
    assert "will be re-examined" in str(reset["message"]) and str(reset["time"]) in str(
        reset["message"]
    )
    assert db_rows(db, "SELECT reset_from FROM listener_control") == [(reset["time"],)]

    missing = subprocess.run(
        [*run, "resume", "Nope", "--json", "--config", str(config)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert (missing.returncode, missing.stdout) == (1, "")
    assert "no listener 'Nope'" in missing.stderr


async def test_reset_in_a_zone_ahead_of_the_server_takes_mail_from_the_first_hours_of_the_day(
    dovecot: DovecotSandbox, mailbox_user: str, tmp_path: Path
) -> None:
    """IMAP SINCE compares the server's dates (UTC here), and 00:00 in Tokyo is 15:00 UTC
    the day before: mail of those first hours is still re-examined, mail of the evening
    before (Tokyo time) is not."""
    tokyo = "Asia/Tokyo"
    day = (dt.datetime.now(UTC) - dt.timedelta(days=5)).date()
    midnight = start_of_day(day, tokyo)
    assert midnight.astimezone(UTC).date() == day - dt.timedelta(days=1)
    db = tmp_path / "store.sqlite3"
    config = write_config(tmp_path / "el.xml", listener_xml(dovecot, mailbox_user, TimeZone=tokyo))
    dovecot.create_folder(mailbox_user, NEW)
    first_hour = (midnight + dt.timedelta(minutes=30)).astimezone(UTC)  # day - 1 in UTC
    evening_before = (midnight - dt.timedelta(minutes=1)).astimezone(UTC)
    dovecot.append(mailbox_user, DONE, make_mail(1, subject="primera hora"), date=first_hour)
    dovecot.append(mailbox_user, DONE, make_mail(2, subject="la noche antes"), date=evening_before)
    done = cli("reset", "Default", "--date", day.isoformat(), "--config", str(config))
    assert done.returncode == 0 and "re-examined" in done.stdout, done.stderr
    assert midnight.isoformat() in done.stdout
    cfg = listener_config(dovecot, mailbox_user, time_zone=tokyo)
    async with Harness(cfg, db, FakeClock()) as h:
        assert h.listener is not None
        await h.listener.run_once()
    assert db_rows(db, "SELECT subject FROM cases") == [("primera hora",)]
    assert db_rows(db, "SELECT reset_from FROM listener_control") == [(None,)]
    assert dovecot.count(mailbox_user, DONE) == 2


async def _cli(config: Path, *args: str) -> str:
    """`engage-listener ARGS --config CONFIG` from a second process, as an operator runs it."""
    done = await asyncio.to_thread(cli, *args, "--config", str(config))
    assert done.returncode == 0, done.stderr
    return done.stdout


async def test_pause_and_resume_requested_while_the_listener_is_idle_are_picked_up(
    dovecot: DovecotSandbox, mailbox_user: str, tmp_path: Path
) -> None:
    dovecot.create_folder(mailbox_user, NEW)
    dovecot.create_folder(mailbox_user, DONE)
    db = tmp_path / "store.sqlite3"
    config = write_config(tmp_path / "el.xml", listener_xml(dovecot, mailbox_user))
    cfg = listener_config(dovecot, mailbox_user, sync_max_changes_count=1)
    clock = FakeClock()
    async with Harness(cfg, db, clock) as h:
        listener = await h.start()
        await eventually(lambda: listener.state == "idle" and clock.sleepers > 0, what="idle")
        future = (dt.datetime.now(UTC) + dt.timedelta(days=3)).date()
        assert "paused until" in await _cli(config, "reset", "Default", "--date", str(future))
        clock.advance(CONTROL_POLL + 1)
        await eventually(lambda: listener.state == "paused" and clock.sleepers > 0, what="pause")
        dovecot.append(mailbox_user, NEW, make_mail(1, subject="durante la pausa"))
        clock.advance(CONTROL_POLL + 1)  # checks back: still paused
        await eventually(lambda: clock.sleepers > 0, what="still paused")
        await asyncio.sleep(0.3)
        assert listener.state == "paused"
        assert dovecot.count(mailbox_user, DONE) == 0
        assert db_rows(db, "SELECT count(*) FROM cases") == [(0,)]
        assert "resumed" in await _cli(config, "resume", "Default")
        clock.advance(CONTROL_POLL + 1)
        await eventually(lambda: dovecot.count(mailbox_user, DONE) == 1, what="after resume")
        await eventually(lambda: listener.state == "idle", what="idle again")
        assert listener.paused_until is None
    assert db_rows(db, "SELECT subject FROM cases") == [("durante la pausa",)]


async def test_reset_requested_while_the_listener_is_idle_is_picked_up(
    dovecot: DovecotSandbox, mailbox_user: str, tmp_path: Path
) -> None:
    dovecot.create_folder(mailbox_user, DONE)
    dovecot.append_many(mailbox_user, NEW, [make_mail(i) for i in range(2)])
    db = tmp_path / "store.sqlite3"
    config = write_config(tmp_path / "el.xml", listener_xml(dovecot, mailbox_user))
    cfg = listener_config(dovecot, mailbox_user)
    clock = FakeClock()
    async with Harness(cfg, db, clock) as h:
        listener = await h.start()
        await eventually(lambda: dovecot.count(mailbox_user, DONE) == 2, what="backlog")
        await eventually(lambda: listener.state == "idle" and clock.sleepers > 0, what="idle")
        # Moved into the output folder without a case, while the listener waits.
        dovecot.append(mailbox_user, DONE, make_mail(10, subject="movida a mano"))
        past = (dt.datetime.now(UTC) - dt.timedelta(days=2)).date()
        assert "re-examined" in await _cli(config, "reset", "Default", "--date", str(past))
        clock.advance(CONTROL_POLL + 1)
        await eventually(
            lambda: db_rows(db, "SELECT count(*) FROM cases") == [(3,)], what="reset ingested"
        )
        await eventually(
            lambda: db_rows(db, "SELECT reset_from FROM listener_control") == [(None,)],
            what="reset done",
        )
        await eventually(lambda: listener.state == "idle" and clock.sleepers > 0, what="idle")
        clock.advance(CONTROL_POLL + 1)  # the next check finds nothing left to do
        await eventually(lambda: clock.sleepers > 0, what="idle again")
        await asyncio.sleep(0.3)
    subjects = sorted(s for (s,) in db_rows(db, "SELECT subject FROM cases"))
    assert subjects == ["Consulta 0", "Consulta 1", "movida a mano"]
    assert dovecot.count(mailbox_user, DONE) == 3
    assert dovecot.count(mailbox_user, NEW) == 0
