"""Issue 18.1-2 on the command line against the PostgreSQL store: `cases show`, `cases
close|reopen`, `cases export` and `attachments save` say the same of the same mails as on
SQLite (test_cases_cli checks what they say there), times aside. Against a real
PostgreSQL (tests.support.postgres)."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import re
from pathlib import Path
from typing import Any

import pytest

from devkit.postgres import PostgresServer
from engage_listener.cases.engine import CaseEngine, EngineSettings
from engage_listener.config.model import StoreConfig
from engage_listener.ops.cli import main
from engage_listener.store.interface import MailKey
from engage_listener.store.open import build_store
from tests.support.config_xml import block, config_text
from tests.support.postgres import fresh_database, postgres_server

__all__ = ["postgres_server"]  # a fixture

LISTENER = {"HostName": "127.0.0.1", "UserName": "u", "Password": "p", "UseSsl": "True"}
REPLY = (
    b"From: Ana P\xc3\xa9rez <ana@cliente.example>\r\n"
    b"To: Soporte <soporte@example.org>, ventas@example.org\r\nCc: jefe@cliente.example\r\n"
    b"Reply-To: Ana <ana.casa@cliente.example>\r\nSubject: RE: Factura duplicada\r\n"
    b"Date: Tue, 10 Mar 2026 10:00:00 +0000\r\nMessage-ID: <r1@cliente.example>\r\n"
    b'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="b"\r\n\r\n'
    b"--b\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<p>Sigue sin llegar.</p>\r\n"
    b'--b\r\nContent-Type: application/pdf; name="factura.pdf"\r\n'
    b'Content-Disposition: attachment; filename="factura.pdf"\r\n'
    b"Content-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQK\r\n--b--\r\n"
)


def _mail(n: int) -> bytes:
    return (
        f"From: c{n}@cliente.example\r\nTo: soporte@example.org\r\nSubject: Consulta {n}\r\n"
        f"Message-ID: <m{n}@cliente.example>\r\n\r\ntexto {n}\r\n"
    ).encode()


TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:[+-]\d\d:\d\d|Z)?")
MAILS = [("L", REPLY), ("M", _mail(2)), ("L", _mail(3))]


async def _ingest(config: StoreConfig) -> None:
    store = build_store(config)
    await store.open()
    try:
        for n, (listener, raw) in enumerate(MAILS):
            engine = CaseEngine(store, EngineSettings(listener, extract_attachments=True))
            await engine.ingest(MailKey(listener, "IN", "1", str(n)), raw)
    finally:
        await store.close()


@pytest.fixture
def configs(postgres_server: PostgresServer, tmp_path: Path) -> dict[str, Path]:
    """A configuration per store kind, each store holding MAILS."""
    url = fresh_database(postgres_server)
    stores = {
        "sqlite": ("store.sqlite3", StoreConfig(tmp_path / "store.sqlite3")),
        "postgres": (url, StoreConfig(tmp_path / "unused", url=url)),
    }
    blocks = block("ImapListener", "L", LISTENER) + block("ImapListener", "M", LISTENER)
    paths = {}
    for kind, (where, store) in stores.items():
        asyncio.run(_ingest(store))
        paths[kind] = tmp_path / f"{kind}.xml"
        paths[kind].write_text(config_text(blocks, store=where))
    return paths


def _timeless(value: Any) -> Any:
    """`value` without the times each store took from the clock (keys ending in _at);
    text output has every time replaced (TIME)."""
    if isinstance(value, dict):
        return {k: _timeless(v) for k, v in value.items() if not k.endswith("_at")}
    if isinstance(value, list):
        return [_timeless(v) for v in value]
    return value


def _both(configs: dict[str, Path], capsys: pytest.CaptureFixture[str], *args: str) -> Any:
    """Run the command on each store; what both said (asserted the same), parsed."""
    said = {}
    for kind, config in configs.items():
        code = main([*args, "--config", str(config)])
        out, err = capsys.readouterr()
        if "--json" in args:
            parsed: Any = _timeless(json.loads(out))
        elif "jsonl" in args:
            parsed = [_timeless(json.loads(line)) for line in out.splitlines()]
        elif "csv" in args:
            parsed = [_timeless(row) for row in csv.DictReader(io.StringIO(out))]
        else:
            parsed = TIME.sub("TIME", out)
        said[kind] = (code, parsed, err.replace(str(config.parent), "DIR"))
    assert said["postgres"] == said["sqlite"], args
    return said["sqlite"]


def test_cases_commands_say_the_same_on_both_stores(
    configs: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    code, shown, _ = _both(configs, capsys, "cases", "show", "1", "--json")
    assert code == 0 and shown["messages"][0]["attachments"][0]["name"] == "factura.pdf"
    assert shown["messages"][0]["cc"][0]["address"] == "jefe@cliente.example"
    assert _both(configs, capsys, "cases", "show", "1")[0] == 0
    code, changes, _ = _both(configs, capsys, "cases", "close", "1", "3", "--reason", "ok",
                               "--json")  # fmt: skip
    assert code == 0 and [c["status"] for c in changes] == ["closed", "closed"]
    assert _both(configs, capsys, "cases", "close", "1", "--json")[0] == 1  # closed already
    code, out, _ = _both(configs, capsys, "cases", "reopen", "1")
    assert (code, out.strip()) == (0, "case 000001 reopened")
    code, listed, _ = _both(configs, capsys, "cases", "--json")
    assert [c["status"] for c in listed] == ["open", "open", "closed"]
    code, docs, err = _both(configs, capsys, "cases", "export", "--format", "jsonl")
    assert code == 0 and [d["close_reason"] for d in docs] == [None, None, "ok"]
    assert "3 case(s) exported" in err
    code, rows, _ = _both(configs, capsys, "cases", "export", "--format", "csv", "--listener", "L")
    assert [r["case_id"] for r in rows] == ["1", "3"]
    code, out, _ = _both(configs, capsys, "cases", "close", "--idle-days", "30")
    assert (code, out.strip()) == (0, "no open case without mail for 30 days")


def test_attachments_save_the_same_files_from_both_stores(
    configs: dict[str, Path], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    saved = {}
    for kind, config in configs.items():
        target = tmp_path / f"saved-{kind}"
        assert main(["attachments", "save", "1", "--to", str(target), "--config", str(config)]) == 0
        saved[kind] = {p.name: p.read_bytes() for p in target.iterdir()}
    assert saved["postgres"] == saved["sqlite"] == {"factura.pdf": b"%PDF-1.4\n"}
    capsys.readouterr()
