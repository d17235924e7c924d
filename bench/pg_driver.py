"""Which PostgreSQL driver for the store (issue 16): psycopg 3 or asyncpg, measured.

    .venv/bin/python bench/pg_driver.py                      # 2,000 mails, 2 rounds, ~15 min
    .venv/bin/python bench/pg_driver.py --mails 300 --rounds 1 --big-mb 5   # a quick look

Both drivers do the work the store does for one mail, against a private PostgreSQL
(devkit.postgres: initdb in a temporary folder, fsync on, loopback TCP with a password):
one transaction of nine statements, committed:

    INSERT ledger row (unique (listener, mailbox, epoch, item))
    SELECT customer by address
    INSERT case, its number from a sequence, RETURNING id
    INSERT message: ~20 kB text, ~200 kB bytea raw mail, RETURNING id
    INSERT 2 attachments, 50 kB bytea each
    INSERT outbox row
    SELECT the listener's lease row FOR UPDATE (the fencing check before commit)

Modes, each in a fresh client process (its CPU time and peak RSS are its own):
  seq   N mails one after the other on one connection;
  pool  N mails by 4 tasks, each mail on a connection taken from the driver's pool
        (4 connections; each task its own listener and lease row, as listeners are);
  chunk N mails on one connection, 100 per transaction, each mail in a savepoint: the
        commit the IMAP batch makes (one per fetched chunk), for comparison;
  pipe  (psycopg only) as seq, the mail's statements sent in libpq's pipeline mode:
        one round trip for the statements and the lease check, one for COMMIT;
  big   one 20 MB bytea inserted and read back, 3 times (client peak RSS against size).
Every round runs both drivers, in alternating order (the machine is shared and noisy);
tables are emptied and a CHECKPOINT taken before each measurement.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import random
import re
import resource
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import suppress
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # devkit is a top-level folder, not installed

DRIVERS = ("psycopg", "asyncpg")
VARIANTS = 8  # distinct payloads, generated before the clock starts
CUSTOMERS = 1000
WARMUP = 20
CHUNK = 100  # mails per transaction in the chunk mode, as the IMAP batch commits
MODES = ("seq", "pool", "chunk", "pipe", "big")

SCHEMA = """
CREATE TABLE customers (id bigserial PRIMARY KEY, address text NOT NULL UNIQUE, name text);
CREATE TABLE ledger (listener text, mailbox text, epoch bigint, item bigint,
    message_id text, sha256 bytea, PRIMARY KEY (listener, mailbox, epoch, item));
CREATE SEQUENCE case_numbers;
CREATE TABLE cases (id bigserial PRIMARY KEY, number bigint NOT NULL UNIQUE,
    customer_id bigint REFERENCES customers, listener text, subject text,
    created timestamptz NOT NULL DEFAULT now());
CREATE TABLE messages (id bigserial PRIMARY KEY, case_id bigint REFERENCES cases,
    sender text, subject text, body_text text, raw bytea);
CREATE TABLE attachments (id bigserial PRIMARY KEY, message_id bigint REFERENCES messages,
    name text, content_type text, data bytea);
CREATE TABLE outbox (id bigserial PRIMARY KEY, case_id bigint REFERENCES cases,
    recipient text, subject text, state text NOT NULL DEFAULT 'pending');
CREATE TABLE leases (listener text PRIMARY KEY, owner text NOT NULL, epoch bigint NOT NULL);
CREATE TABLE big (id bigserial PRIMARY KEY, data bytea);
"""
EMPTY = (
    "TRUNCATE ledger, cases, messages, attachments, outbox, big",
    "ALTER SEQUENCE case_numbers RESTART",
)

# asyncpg's $n placeholders; psycopg gets %s in the same order.
SQL = {
    "ledger": "INSERT INTO ledger VALUES ($1, 'INBOX', 1, $2, $3, $4)",
    "customer": "SELECT id FROM customers WHERE address = $1",
    "case": "INSERT INTO cases (number, customer_id, listener, subject)"
    " VALUES (nextval('case_numbers'), $1, $2, $3) RETURNING id, number",
    "message": "INSERT INTO messages (case_id, sender, subject, body_text, raw)"
    " VALUES ($1, $2, $3, $4, $5) RETURNING id",
    "attachment": "INSERT INTO attachments (message_id, name, content_type, data)"
    " VALUES ($1, $2, 'application/pdf', $3)",
    "outbox": "INSERT INTO outbox (case_id, recipient, subject) VALUES ($1, $2, $3)",
    "lease": "SELECT epoch FROM leases WHERE listener = $1 AND owner = $2 FOR UPDATE",
    "big_in": "INSERT INTO big (data) VALUES ($1) RETURNING id",
    "big_out": "SELECT data FROM big WHERE id = $1",
}
OWNER = "bench-host:1"
# One mail in one round trip (psycopg's pipeline mode): ids through currval, no RETURNING.
PIPELINED = {
    "case": "INSERT INTO cases (number, customer_id, listener, subject)"
    " SELECT nextval('case_numbers'), id, %s, %s FROM customers WHERE address = %s",
    "message": "INSERT INTO messages (case_id, sender, subject, body_text, raw)"
    " VALUES (currval('cases_id_seq'), %s, %s, %s, %s)",
    "attachment": "INSERT INTO attachments (message_id, name, content_type, data)"
    " VALUES (currval('messages_id_seq'), %s, 'application/pdf', %s)",
    "outbox": "INSERT INTO outbox (case_id, recipient, subject)"
    " VALUES (currval('cases_id_seq'), %s, %s)",
}


def payloads() -> list[dict[str, Any]]:
    """VARIANTS mails: text that compresses like mail, attachments that do not."""
    rng = random.Random(16)
    words = ["caso", "cliente", "pedido", "factura", "envío", "respuesta", "atención"]
    words += ["dúvida", "obrigado", "entrega", "prazo", "reclamação"]
    out = []
    for n in range(VARIANTS):
        text = " ".join(rng.choice(words) for _ in range(2600))[:20_000]
        raw = (text.encode() + rng.randbytes(60_000).hex().encode())[:200_000]
        out.append({
            "text": text, "raw": raw,
            "attachments": [rng.randbytes(50_000), rng.randbytes(50_000)],
            "subject": f"Pedido {n} — atraso na entrega",
        })  # fmt: skip
    return out


def peak_rss_mib() -> float:
    """VmHWM: the peak of this process since its exec (ru_maxrss may carry the parent's)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ----- the two drivers, the same work -------------------------------------------------


class Psycopg:
    def __init__(self, url: str) -> None:
        import psycopg  # noqa: PLC0415 - each client process imports one driver only

        self.psycopg, self.url = psycopg, url
        self.sql = {k: re.sub(r"\$\d+", "%s", v) for k, v in SQL.items()}

    async def connect(self) -> Any:
        return await self.psycopg.AsyncConnection.connect(self.url, autocommit=True)

    async def pool(self, size: int) -> Any:
        from psycopg_pool import AsyncConnectionPool  # noqa: PLC0415

        pool = AsyncConnectionPool(
            self.url, min_size=size, max_size=size, open=False, kwargs={"autocommit": True}
        )
        await pool.open(wait=True)
        return pool

    def borrow(self, pool: Any) -> Any:
        return pool.connection()

    async def mail(self, conn: Any, listener: str, i: int, p: dict[str, Any]) -> None:
        q = self.sql
        async with conn.transaction():
            await conn.execute(q["ledger"], (listener, i, f"<{i}@bench>", b"\x01" * 32))
            cur = await conn.execute(q["customer"], (f"c{i % CUSTOMERS}@example.org",))
            (customer,) = await cur.fetchone()
            cur = await conn.execute(q["case"], (customer, listener, p["subject"]))
            case_id, _number = await cur.fetchone()
            cur = await conn.execute(
                q["message"], (case_id, "c@example.org", p["subject"], p["text"], p["raw"])
            )
            (message_id,) = await cur.fetchone()
            for n, data in enumerate(p["attachments"]):
                await conn.execute(q["attachment"], (message_id, f"a{n}.pdf", data))
            await conn.execute(q["outbox"], (case_id, "c@example.org", p["subject"]))
            cur = await conn.execute(q["lease"], (listener, OWNER))
            if await cur.fetchone() is None:
                raise RuntimeError("lease lost")

    async def mail_pipelined(self, conn: Any, listener: str, i: int, p: dict[str, Any]) -> None:
        """The same statements, sent without waiting; the lease's answer is the only wait."""
        q, subject = PIPELINED, p["subject"]
        async with conn.pipeline(), conn.transaction():
            await conn.execute(self.sql["ledger"], (listener, i, f"<{i}@bench>", b"\x01" * 32))
            await conn.execute(q["case"], (listener, subject, f"c{i % CUSTOMERS}@example.org"))
            await conn.execute(q["message"], ("c@example.org", subject, p["text"], p["raw"]))
            for n, data in enumerate(p["attachments"]):
                await conn.execute(q["attachment"], (f"a{n}.pdf", data))
            await conn.execute(q["outbox"], ("c@example.org", subject))
            cur = await conn.execute(self.sql["lease"], (listener, OWNER))
            if await cur.fetchone() is None:  # a sync point: COMMIT is sent after the check
                raise RuntimeError("lease lost")

    async def big(self, conn: Any, data: bytes) -> tuple[float, float]:
        start = time.perf_counter()
        cur = await conn.execute(self.sql["big_in"], (data,))
        (row_id,) = await cur.fetchone()
        inserted = time.perf_counter()
        cur = conn.cursor(binary=True)  # text results would return bytea hex-encoded
        await cur.execute(self.sql["big_out"], (row_id,))
        (back,) = await cur.fetchone()
        assert len(back) == len(data)
        return inserted - start, time.perf_counter() - inserted


class Asyncpg:
    def __init__(self, url: str) -> None:
        import asyncpg  # noqa: PLC0415

        self.asyncpg, self.url = asyncpg, url

    async def connect(self) -> Any:
        return await self.asyncpg.connect(self.url)

    async def pool(self, size: int) -> Any:
        return await self.asyncpg.create_pool(self.url, min_size=size, max_size=size)

    def borrow(self, pool: Any) -> Any:
        return pool.acquire()

    async def mail(self, conn: Any, listener: str, i: int, p: dict[str, Any]) -> None:
        async with conn.transaction():
            await conn.execute(SQL["ledger"], listener, i, f"<{i}@bench>", b"\x01" * 32)
            customer = await conn.fetchval(SQL["customer"], f"c{i % CUSTOMERS}@example.org")
            row = await conn.fetchrow(SQL["case"], customer, listener, p["subject"])
            message_id = await conn.fetchval(
                SQL["message"], row["id"], "c@example.org", p["subject"], p["text"], p["raw"]
            )
            for n, data in enumerate(p["attachments"]):
                await conn.execute(SQL["attachment"], message_id, f"a{n}.pdf", data)
            await conn.execute(SQL["outbox"], row["id"], "c@example.org", p["subject"])
            if await conn.fetchrow(SQL["lease"], listener, OWNER) is None:
                raise RuntimeError("lease lost")

    async def big(self, conn: Any, data: bytes) -> tuple[float, float]:
        start = time.perf_counter()
        row_id = await conn.fetchval(SQL["big_in"], data)
        inserted = time.perf_counter()
        back = await conn.fetchval(SQL["big_out"], row_id)
        assert len(back) == len(data)
        return inserted - start, time.perf_counter() - inserted


# ----- one measurement, in its own process --------------------------------------------


async def measure(driver: str, mode: str, url: str, mails: int, tasks: int, big_mb: int) -> dict:
    client = Psycopg(url) if driver == "psycopg" else Asyncpg(url)
    if mode == "big":
        return await measure_big(client, big_mb)
    ps = payloads()
    todo = range(WARMUP, WARMUP + mails)
    if mode == "pool":
        pool = await client.pool(tasks)

        async def one(listener: str, i: int) -> None:
            async with client.borrow(pool) as conn:
                await client.mail(conn, listener, i, ps[i % VARIANTS])

        async def run(ids: Sequence[int]) -> None:
            counter = iter(ids)  # shared: each task takes the next mail

            async def task(n: int) -> None:
                for i in counter:
                    await one(f"L{n}", i)

            await asyncio.gather(*(task(n) for n in range(tasks)))

        close: Callable[[], Awaitable[None]] = pool.close
    else:
        conn = await client.connect()
        size = CHUNK if mode == "chunk" else 1
        mail = client.mail_pipelined if isinstance(client, Psycopg) and mode == "pipe" else None

        async def run(ids: Sequence[int]) -> None:
            for k in range(0, len(ids), size):
                if size == 1:
                    await (mail or client.mail)(conn, "L0", ids[k], ps[ids[k] % VARIANTS])
                    continue
                async with conn.transaction():  # each mail's own becomes a savepoint
                    for i in ids[k : k + size]:
                        await client.mail(conn, "L0", i, ps[i % VARIANTS])

        close = conn.close
    await run(range(WARMUP))  # statement caches and the pool filled before the clock starts
    wall, cpu = time.perf_counter(), time.process_time()
    await run(todo)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    await close()
    return {
        "mails_per_s": mails / wall,
        "cpu_ms_per_mail": cpu / mails * 1000,
        "wall_s": wall,
        "peak_rss_mib": peak_rss_mib(),
    }


async def measure_big(client: Psycopg | Asyncpg, big_mb: int) -> dict:
    data = random.Random(20).randbytes(big_mb * 1_000_000)
    conn = await client.connect()
    times = [await client.big(conn, data) for _ in range(3)]
    await conn.close()
    return {
        "insert_s": statistics.median(t[0] for t in times),
        "read_s": statistics.median(t[1] for t in times),
        "peak_rss_mib": peak_rss_mib(),
    }


# ----- the session: one PostgreSQL, both drivers interleaved --------------------------


def machine(server_version: str) -> dict[str, str]:
    def out(*cmd: str) -> str:
        return subprocess.run(cmd, capture_output=True, text=True, check=False).stdout.strip()

    import importlib.metadata as md  # noqa: PLC0415

    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": out("git", "-C", str(REPO), "describe", "--always", "--dirty"),
        "nproc": out("nproc"),
        "load at start": Path("/proc/loadavg").read_text().split()[0],
        "python": platform.python_version(),
        "postgresql": server_version,
        "psycopg": md.version("psycopg") + " (psycopg-binary, libpq bundled), psycopg-pool "
        + md.version("psycopg-pool"),
        "asyncpg": md.version("asyncpg"),
    }  # fmt: skip


def session(args: argparse.Namespace) -> dict[str, Any]:
    from devkit.postgres import PostgresServer  # noqa: PLC0415

    def stop(signum: int, _frame: object) -> None:
        raise SystemExit(f"stopped by signal {signum}")  # the server stops on the way out

    # Started with `&` from a script, SIGINT arrives ignored: take both back.
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    results: list[dict[str, Any]] = []
    settings = dict(kv.split("=", 1) for kv in args.setting)
    with PostgresServer(settings=settings) as server:
        server.sql(f"SET ROLE {server.user}", *SCHEMA.strip().split(";\n"), database="engage")
        server.sql(
            f"INSERT INTO customers (address) SELECT 'c' || n || '@example.org'"
            f" FROM generate_series(0, {CUSTOMERS - 1}) n",
            "INSERT INTO leases VALUES "
            + ", ".join(f"('L{n}', '{OWNER}', 1)" for n in range(args.tasks)),
            database="engage",
        )
        info = machine(server.sql("SHOW server_version").strip())
        for rnd in range(args.rounds):
            order = args.drivers if rnd % 2 == 0 else args.drivers[::-1]
            for mode in MODES:
                for driver in order:
                    if mode == "pipe" and driver != "psycopg":
                        continue  # asyncpg has no pipeline mode for statements with arguments
                    server.sql(*EMPTY, database="engage")
                    server.sql("CHECKPOINT")
                    before = server_cpu(server.pid, server.processes())
                    row = child(driver, mode, server.url, args)
                    spent = server_cpu(server.pid, server.processes()) - before
                    if mode != "big":
                        row["server_cpu_ms_per_mail"] = spent / (args.mails + WARMUP) * 1000
                    row.update(driver=driver, mode=mode, round=rnd + 1)
                    print(json.dumps(row), flush=True)
                    results.append(row)
    return {"machine": info, "args": vars(args), "results": results}


def server_cpu(postmaster: int, pids: set[int]) -> float:
    """CPU seconds of the server: its processes, and the backends that have ended since."""
    ticks = 0
    for pid in pids:
        with suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
            # utime, stime (fields 14-15); the postmaster also cutime, cstime (16-17)
            ticks += sum(int(f) for f in fields[11 : 15 if pid == postmaster else 13])
    return ticks / os.sysconf("SC_CLK_TCK")


def child(driver: str, mode: str, url: str, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "_run", driver, mode, url]
    cmd += [str(args.mails), str(args.tasks), str(args.big_mb)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=1800)
    if done.returncode != 0:
        raise SystemExit(f"{driver} {mode} failed:\n{done.stderr}")
    return json.loads(done.stdout.splitlines()[-1])


def report(data: dict[str, Any]) -> str:
    rows = data["results"]
    lines = [f"{k}: {v}" for k, v in data["machine"].items()]
    lines.append(f"mails per run: {data['args']['mails']}, pool of {data['args']['tasks']}")
    head = "| driver | mode | mails/s | client CPU ms/mail | server CPU ms/mail | peak RSS MiB |"
    lines += ["", head + " mails/s by run |", "|---" * 7 + "|"]
    for mode in MODES[:-1]:
        for driver in data["args"]["drivers"]:
            mine = [r for r in rows if r["driver"] == driver and r["mode"] == mode]
            if not mine:
                continue
            speed = [f"{r['mails_per_s']:.0f}" for r in mine]
            cpu = statistics.median(r["cpu_ms_per_mail"] for r in mine)
            server = statistics.median(r["server_cpu_ms_per_mail"] for r in mine)
            rss = max(r["peak_rss_mib"] for r in mine)
            med = statistics.median(r["mails_per_s"] for r in mine)
            lines.append(f"| {driver} | {mode} | {med:.0f} | {cpu:.2f} | {server:.1f} | {rss:.0f} "
                         f"| {' / '.join(speed)} |")  # fmt: skip
    size = data["args"]["big_mb"]
    lines += ["", f"| driver | {size} MB bytea insert s | read s | peak RSS MiB |"]
    lines.append("|---" * 4 + "|")
    for driver in data["args"]["drivers"]:
        mine = [r for r in rows if r["driver"] == driver and r["mode"] == "big"]
        ins = " / ".join(f"{r['insert_s']:.3f}" for r in mine)
        read = " / ".join(f"{r['read_s']:.3f}" for r in mine)
        rss = " / ".join(f"{r['peak_rss_mib']:.0f}" for r in mine)
        lines.append(f"| {driver} | {ins} | {read} | {rss} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["_run"]:
        driver, mode, url, mails, tasks, big_mb = argv[1:7]
        row = asyncio.run(measure(driver, mode, url, int(mails), int(tasks), int(big_mb)))
        print(json.dumps(row))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mails", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--tasks", type=int, default=4, help="pool size and concurrent tasks")
    parser.add_argument("--big-mb", type=int, default=20)
    parser.add_argument("--drivers", type=lambda s: s.split(","), default=list(DRIVERS))
    parser.add_argument(
        "--setting",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a PostgreSQL setting for the run, e.g. default_toast_compression=lz4",
    )
    parser.add_argument("--json", type=Path, help="also write every figure here")
    args = parser.parse_args(argv)
    data = session(args)
    if args.json:
        args.json.write_text(json.dumps(data, indent=2, default=str))
    print(report(data))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
