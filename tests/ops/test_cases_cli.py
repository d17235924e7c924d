"""Issue 18.1-2 on the command line: `cases show`, `cases export`, `cases close|reopen`
and `attachments save`, against a store the case engine filled."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from engage_listener.cases.engine import CaseEngine, EngineSettings
from engage_listener.ops import case_export
from engage_listener.ops.cli import main
from engage_listener.store.interface import MailKey, NewAttachment, Store
from engage_listener.store.sqlite.store import SqliteStore
from tests.support.config_xml import block, config_text
from tests.support.daemon import cli

T = TypeVar("T")
LISTENER = {"HostName": "127.0.0.1", "UserName": "u", "Password": "p", "UseSsl": "True"}
REPLY = (
    "From: Ana Pérez <ana@cliente.example>\r\n"
    "To: Soporte <soporte@example.org>, ventas@example.org\r\n"
    "Cc: jefe@cliente.example\r\n"
    "Reply-To: Ana <ana.casa@cliente.example>\r\n"
    "Subject: RE: Factura \x1b]0;pwned\x07 duplicada\r\n"
    "Date: Tue, 10 Mar 2026 10:00:00 +0000\r\n"
    "Message-ID: <r1@cliente.example>\r\n"
    "MIME-Version: 1.0\r\n"
    'Content-Type: multipart/mixed; boundary="b"\r\n\r\n'
    "--b\r\n"
    'Content-Type: multipart/alternative; boundary="c"\r\n\r\n'
    "--c\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
    "Sigue sin llegar.\r\n\r\nEl lun, 9 mar 2026, Soporte escribió:\r\n> Ya la enviamos.\x1b[2J\r\n"
    "--c\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<p>Sigue sin llegar.</p>\r\n"
    "--c--\r\n"
    "--b\r\n"
    'Content-Type: application/pdf; name="factura.pdf"\r\n'
    'Content-Disposition: attachment; filename="factura.pdf"\r\n'
    "Content-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQK\r\n"
    "--b--\r\n"
)


def _mail(n: int, subject: str = "Consulta") -> bytes:
    return (
        f"From: c{n}@cliente.example\r\nTo: soporte@example.org\r\nSubject: {subject} {n}\r\n"
        f"Message-ID: <m{n}@cliente.example>\r\n\r\ntexto {n}\r\n"
    ).encode()


def _run(db: Path, work: Callable[[SqliteStore], Awaitable[T]]) -> T:
    async def go() -> T:
        store = SqliteStore(db)
        await store.open()
        try:
            return await work(store)
        finally:
            await store.close()

    return asyncio.run(go())


def _ingest(db: Path, mails: list[tuple[str, bytes]], extract: bool = True) -> list[int]:
    async def work(store: SqliteStore) -> list[int]:
        ids = []
        for n, (listener, raw) in enumerate(mails):
            settings = EngineSettings(listener=listener, extract_attachments=extract)
            done = await CaseEngine(store, settings).ingest(
                MailKey(listener, "IN", "1", str(n)), raw
            )
            assert done.case_id is not None
            ids.append(done.case_id)
        return ids

    return _run(db, work)


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "el.xml"
    blocks = block("ImapListener", "L", LISTENER) + block("ImapListener", "M", LISTENER)
    path.write_text(config_text(blocks, store="store.sqlite3"))
    return path


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


# ----- cases show ----------------------------------------------------------------------
def test_show_gives_every_field_of_each_mail(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = config.parent / "store.sqlite3"
    [case_id] = _ingest(db, [("L", REPLY.encode())])
    code, out, _ = _cli(capsys, "cases", "show", str(case_id), "--json", "--config", str(config))
    assert code == 0
    doc = json.loads(out)
    assert (doc["id"], doc["status"], doc["listener"]) == (case_id, "open", "L")
    [m] = doc["messages"]
    assert m["from"] == {"name": "Ana Pérez", "address": "ana@cliente.example"}
    assert [p["address"] for p in m["to"]] == ["soporte@example.org", "ventas@example.org"]
    assert m["to"][0]["name"] == "Soporte"
    assert [p["address"] for p in m["cc"]] == ["jefe@cliente.example"]
    assert m["reply_to"] == [{"name": "Ana", "address": "ana.casa@cliente.example"}]
    assert m["date"].startswith("2026-03-10T10:00:00")
    assert "Ya la enviamos" in m["text"] and m["new_text"].strip() == "Sigue sin llegar."
    assert m["has_html"] is True
    assert m["attachments"] == [
        {"id": m["attachments"][0]["id"], "name": "factura.pdf", "type": "application/pdf",
         "size": 9, "inline": False}
    ]  # fmt: skip
    assert m["acknowledgement"] == {"routing": None, "state": None}
    code, text, _ = _cli(capsys, "cases", "show", str(case_id), "--config", str(config))
    assert code == 0
    for line in (
        "To:       Soporte <soporte@example.org>, ventas@example.org",
        "Cc:       jefe@cliente.example",
        "Reply-To: Ana <ana.casa@cliente.example>",
        "HTML:     yes",
        "factura.pdf (application/pdf, 9 bytes)",
        "  new text:",
    ):
        assert line in text, text
    assert "\x1b" not in text and "\x07" not in text  # mail never retitles or clears it
    assert "> Ya la enviamos." in text


def test_show_an_unknown_case_fails_plainly(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = _cli(capsys, "cases", "show", "42", "--config", str(config))
    assert (code, out) == (1, "") and "no case 42" in err


# ----- cases close / reopen ------------------------------------------------------------
def test_close_and_reopen_by_id_with_json_and_exit_codes(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = config.parent / "store.sqlite3"
    first, second = _ingest(db, [("L", _mail(1)), ("L", _mail(2))])
    base = ["--config", str(config), "--json"]
    code, out, _ = _cli(capsys, "cases", "close", str(first), str(second), "--reason", "ok", *base)
    assert code == 0
    assert [(c["done"], c["status"]) for c in json.loads(out)] == [(True, "closed")] * 2
    code, out, _ = _cli(capsys, "cases", "close", str(first), "99", *base)
    changes = json.loads(out)
    assert code == 1 and [c["done"] for c in changes] == [False, False]
    assert "is closed, not open" in changes[0]["text"] and changes[1]["status"] is None
    code, out, _ = _cli(capsys, "cases", "reopen", str(first), "--config", str(config))
    assert (code, out.strip()) == (0, "case 000001 reopened")
    code, out, _ = _cli(capsys, "cases", "--json", "--config", str(config))
    assert [c["status"] for c in json.loads(out)] == ["open", "closed"]
    code, out, _ = _cli(capsys, "cases", "show", str(second), "--json", "--config", str(config))
    assert (json.loads(out)["close_reason"], code) == ("ok", 0)


def test_close_needs_ids_or_idle_days_not_both(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for args in (["cases", "close"], ["cases", "close", "1", "--idle-days", "3"]):
        code, _, err = _cli(capsys, *args, "--config", str(config))
        assert code == 1 and "give case IDs or --idle-days N" in err
    with pytest.raises(SystemExit):
        main(["cases", "close", "--idle-days", "-1", "--config", str(config)])


def test_close_idle_days_closes_only_cases_quiet_that_long(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import datetime as dt  # noqa: PLC0415

    from engage_listener.ops.case_status import close_idle  # noqa: PLC0415

    db = config.parent / "store.sqlite3"
    quiet, _ = _ingest(db, [("L", _mail(1)), ("L", _mail(2))])
    code, out, _ = _cli(capsys, "cases", "close", "--idle-days", "30", "--config", str(config))
    assert (code, out.strip()) == (0, "no open case without mail for 30 days")
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=4)

    async def age(store: SqliteStore) -> None:  # the first case's mail: 4 days ago
        async with store.transaction() as tx:
            await tx.execute(
                "UPDATE messages SET received_at = ? WHERE case_id = ?",
                ((later - dt.timedelta(days=8)).isoformat(timespec="seconds"), quiet),
            )

    _run(db, age)
    changes = _run(db, lambda s: close_idle(s, 5, None, now=later))  # quiet since later-5d
    assert [(c.case_id, c.done, c.text) for c in changes] == [
        (quiet, True, "case 000001 closed (no mail for 5 days)")
    ]


# ----- cases export --------------------------------------------------------------------
def test_export_jsonl_and_csv_by_listener_and_since(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = config.parent / "store.sqlite3"
    _ingest(db, [("L", REPLY.encode()), ("M", _mail(2)), ("L", _mail(3))])
    base = ["cases", "export", "--config", str(config)]
    code, out, err = _cli(capsys, *base, "--format", "jsonl")
    docs = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and [d["listener"] for d in docs] == ["L", "M", "L"]
    assert "3 case(s) exported" in err
    assert docs[0]["messages"][0]["cc"][0]["address"] == "jefe@cliente.example"
    code, out, _ = _cli(capsys, *base, "--format", "csv", "--listener", "L")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [r["case_id"] for r in rows] == ["1", "3"]
    assert tuple(rows[0]) == case_export.CSV_COLUMNS
    assert rows[0]["attachments"] == "factura.pdf" and "Sigue sin llegar" in rows[0]["text"]
    code, out, _ = _cli(capsys, *base, "--format", "jsonl", "--since", "2999-01-01")
    assert (code, out) == (0, "")


def test_csv_export_quotes_what_a_spreadsheet_would_run_as_a_formula(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A sender's subject, name and text that start like a formula reach the CSV as text
    (a leading '), unless --csv-formulas keep; JSON Lines keeps them as they are."""
    hostile = (
        b'From: "=HYPERLINK(""http://evil.example"")" <x@cliente.example>\r\n'
        b"To: soporte@example.org\r\nSubject: =1+cmd|' /C calc'!A0\r\n"
        b"Message-ID: <f1@cliente.example>\r\n\r\n@SUM(A1:A9)\r\n"
    )
    db = config.parent / "store.sqlite3"
    _ingest(db, [("L", hostile)])
    base = ["cases", "export", "--config", str(config)]
    code, out, _ = _cli(capsys, *base, "--format", "csv")
    (row,) = list(csv.DictReader(io.StringIO(out)))
    assert code == 0
    assert row["subject"] == row["case_subject"] == "'=1+cmd|' /C calc'!A0"
    assert row["from"].startswith("'=HYPERLINK(") and row["text"].startswith("'@SUM(A1:A9)")
    assert row["case_number"] == "000001" and row["listener"] == "L"  # others untouched
    code, out, _ = _cli(capsys, *base, "--format", "csv", "--csv-formulas", "keep")
    (row,) = list(csv.DictReader(io.StringIO(out)))
    assert row["subject"] == "=1+cmd|' /C calc'!A0" and row["text"].startswith("@SUM(")
    code, out, _ = _cli(capsys, *base, "--format", "jsonl")
    assert json.loads(out)["subject"] == "=1+cmd|' /C calc'!A0"


def test_export_streams_a_page_at_a_time(tmp_path: Path) -> None:
    """Each page is written before the next one is read: never every case at once."""
    db = tmp_path / "s.sqlite3"
    _ingest(db, [("L", _mail(n)) for n in range(5)])
    out = io.StringIO()
    seen: list[tuple[int, int, int]] = []  # (after_id, limit, lines written before)

    class Watching:
        def __init__(self, store: Store) -> None:
            self.store = store

        def __getattr__(self, name: str) -> Any:
            return getattr(self.store, name)

        async def cases_page(self, after_id: int, limit: int, **kw: Any) -> Any:
            seen.append((after_id, limit, out.getvalue().count("\n")))
            return await self.store.cases_page(after_id, 2, **kw)

    count = _run(db, lambda s: case_export.export_cases(Watching(s), out, "jsonl"))
    assert count == 5 and out.getvalue().count("\n") == 5
    assert seen == [(0, case_export.PAGE, 0), (2, case_export.PAGE, 2),
                    (4, case_export.PAGE, 4), (5, case_export.PAGE, 5)]  # fmt: skip


# ----- attachments save ----------------------------------------------------------------
HOSTILE = [
    "../../outside.txt",
    "/etc/passwd",
    "..\\..\\windows.ini",
    "nul\x00byte.txt",
    "x" * 400 + ".pdf",
    "dup.txt",
    "dup.txt",
    "..",
    "",
    "link.txt",
    "CON.txt",
]


def test_attachments_are_saved_under_safe_names_never_outside(
    config: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    db = config.parent / "store.sqlite3"
    [case_id] = _ingest(db, [("L", _mail(1))], extract=True)

    async def hostile(store: SqliteStore) -> None:
        [m] = await store.case_messages(case_id)
        async with store.transaction() as tx:
            for n, name in enumerate(HOSTILE):
                await tx.add_attachment(m.id, NewAttachment(name, "text/plain", f"{n}".encode()))

    _run(db, hostile)
    target = tmp_path / "out" / "deep"
    target.mkdir(parents=True)
    (target / "dup.txt").write_text("kept")
    victim = tmp_path / "victim.txt"
    victim.write_text("untouched")
    os.symlink(victim, target / "link.txt")
    code, out, _ = _cli(
        capsys, "attachments", "save", str(case_id), "--to", str(target), "--json",
        "--config", str(config),
    )  # fmt: skip
    assert code == 0
    saved = json.loads(out)
    assert len(saved) == len(HOSTILE)
    for item in saved:
        path = Path(item["path"])
        assert path.parent == target and path.is_file() and not path.is_symlink()
        assert len(path.name.encode()) <= 255 and "\x00" not in path.name
        assert path.read_bytes() == str(HOSTILE.index(item["original_name"])).encode() or (
            item["original_name"] == "dup.txt"
        )
    names = [Path(s["path"]).name for s in saved]
    assert len(set(names)) == len(names)
    assert (target / "dup.txt").read_text() == "kept" and victim.read_text() == "untouched"
    assert {"dup (2).txt", "dup (3).txt", "link (2).txt", "_CON.txt"} <= set(names)
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["deep"]
    assert {p.name for p in tmp_path.iterdir()} <= {
        "el.xml", "store.sqlite3", "store.sqlite3-wal", "store.sqlite3-shm", "out", "victim.txt"
    }  # fmt: skip
    assert all(os.stat(Path(s["path"])).st_mode & 0o777 == 0o600 for s in saved)


def test_attachments_save_of_an_unknown_case_and_in_a_subprocess(
    config: Path, tmp_path: Path
) -> None:
    done = cli("attachments", "save", "7", "--to", str(tmp_path / "x"), "--config", str(config))
    assert done.returncode == 1 and "no case 7" in done.stderr
    db = config.parent / "store.sqlite3"
    [case_id] = _ingest(db, [("L", REPLY.encode())], extract=True)
    done = cli(
        "attachments", "save", str(case_id), "--to", str(tmp_path / "x"), "--config", str(config)
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "x" / "factura.pdf").read_bytes() == b"%PDF-1.4\n"
    assert "1 attachment(s) saved" in done.stdout
