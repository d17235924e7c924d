"""Ingest benchmark: engage-listener against a plain imaplib + email loop, on a private Dovecot.

    .venv/bin/python bench/ingest.py --sizes 1000,10000
    .venv/bin/python bench/ingest.py --sizes 200 --rounds 5        # a quick look

Everything runs on 127.0.0.1 against a Dovecot the script starts in a temporary
directory and stops at the end. Every measurement gets a fresh mailbox user
seeded with APPEND from the same deterministic corpus (bench/mailgen.py), its
own SQLite store, and runs in a subprocess whose peak RSS comes from wait4().

1. Throughput, for each N of --sizes:
   * baseline: stdlib imaplib over STARTTLS, UID FETCH BODY.PEEK[] 100 UIDs at a
     time, each mail parsed with email.policy.default (subject, from, date,
     body via get_body, every attachment decoded), then UID MOVE to the output
     folder;
   * engage-listener: `run --once` with ExtractAttachments True, the example SQL
     routing procedure, the ledger and the move, on the SQLite store.
2. Latency: the daemon (not --once) with SyncMaxChangesCount 10; per round, APPEND
   9 mails, then the 10th, and time until the 10 cases are committed (SQLite
   polled every 2 ms); compared with the server's own IDLE notification delay as
   a bare imaplib IDLE client sees it.
3. One 50 MB mail through both, with peak RSS against its size.
4. Optional (issue 19, bench/references.py): isync's mbsync into a local Maildir beside the
   baseline (--source mbsync), one daemon with many listeners (--many 20x500), 1,000 mails
   into a store grown to --growth mails, other Process/Workers (--also-workers) and another
   checkout's daemon (--also-code) in the same run. Peak RSS and CPU count the daemon's
   parse worker processes too.
5. Optional (issue 16 point 9, bench/pg_ingest.py): each size once more on a PostgreSQL
   store (--store sqlite,postgres), and 1 then 2 daemons over 8 mailboxes on one
   PostgreSQL (--daemons 1,2), on a private server the script starts.
"""

from __future__ import annotations

import argparse
import compileall
import datetime as dt
import email
import email.policy
import imaplib
import json
import os
import platform
import pstats
import queue
import shutil
import signal
import sqlite3
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import mailgen  # stdlib only, like everything the baseline process imports
import references
from pg_ingest import PG_HOOK, ClusterRow, PgServer, cluster_report, cluster_run, store_xml

if TYPE_CHECKING:
    from devkit.dovecot import DovecotSandbox

REPO = Path(__file__).resolve().parent.parent
ROUTING_SQL = REPO / "examples" / "routing" / "pa_sys_msg_in.sql"
NEW, DONE = "IMAP/New", "IMAP/Done"
FETCH_CHUNK = 100
MB = 1_000_000
MIB = 1024 * 1024

# Targets from the issues (9, then 19); reported against, never tuned for.
TARGET_SPEEDUP = 3.0
TARGET_RSS_10K = 200 * MB  # every process of the daemon together
TARGET_HUGE_FACTOR = 4.0
TARGET_LATENCY_OVER_IDLE = 0.150
PROTOLOG_TOOL = "engage+protolog"
MBSYNC_TOOL = "mbsync"  # isync's, into a local Maildir: the native reference
MANY_TOOL = "engage-many"  # one daemon, many listeners
GROW_TOOL = "engage-grown"  # 1,000 mails into a store of --growth mails
PG_TOOL = "engage-postgres"  # --store postgres: the same run on a PostgreSQL store
TARGET_PG_RATIO = 0.7  # issue 16: PostgreSQL msgs/s >= 0.7x SQLite's
GRAPH_TOOL = "engage-graph"  # --source graph: the Graph listener against the imitation
SPY_RATE = 250  # py-spy samples per second


# ----- small helpers ------------------------------------------------------------------


def imap_quote(name: str) -> str:
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def mib(n: float) -> str:
    return f"{n / MIB:.1f}"


def wait_for(check: Callable[[], bool], timeout: float, what: str, step: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(step)


def events(log: Path) -> list[dict[str, object]]:
    out = []
    if log.exists():
        for line in log.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                with suppress(ValueError):
                    out.append(json.loads(line))
    return out


def p90(values: Sequence[float]) -> float:
    if len(values) < 2:
        return values[0]
    return statistics.quantiles(values, n=10, method="inclusive")[-1]


@dataclass
class Measured:
    """One subprocess: wall time from fork to exit, peak RSS of the process."""

    returncode: int
    seconds: float
    peak_rss: int  # bytes
    timed_out: bool
    cpu_seconds: float  # user + system of the process and its own (parse) workers
    tree_rss: int = 0  # bytes: the peak RSS of the process plus each worker's peak


# Linux carries ru_maxrss across execve(), and vfork()/posix_spawn() children start from
# their parent's memory: a child spawned straight from this process (which holds the
# corpus) would report at least this process's RSS. So a small launcher forks the command
# from its own few MiB, waits for it with wait4() and writes what the kernel reports.
LAUNCHER = """
import os, signal, sys, time
out, timeout, cmd = sys.argv[1], float(sys.argv[2]), sys.argv[3:]
started = time.perf_counter()
import ctypes
# workers the process leaves behind at its exit become ours: reaped (and their CPU
# counted) below
ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
pid = os.fork()
if pid == 0:
    try:
        os.execvp(cmd[0], cmd)
    finally:
        os._exit(127)
killed = []
def kill(*_):
    killed.append(1)
    os.kill(pid, signal.SIGKILL)
signal.signal(signal.SIGALRM, kill)
signal.setitimer(signal.ITIMER_REAL, timeout)
# The process's workers (the parse pool) count too: every 50 ms, the peak RSS (VmHWM) of
# each process below it, summed at the end.
peaks, children = {}, {}
def tree(top):
    found, todo = [], [top]
    while todo:
        p = todo.pop()
        found.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except OSError:
            pass
    return found
while True:
    got, status, usage = os.wait4(pid, os.WNOHANG)
    if got:
        break
    for p in tree(pid)[1:]:
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        peaks[p] = max(peaks.get(p, 0), int(line.split()[1]))
        except OSError:
            pass
    time.sleep(0.05)
seconds = time.perf_counter() - started
signal.setitimer(signal.ITIMER_REAL, 0)
while True:
    try:
        os.wait4(-1, 0)
    except ChildProcessError:
        break
kids = os.times()
with open(out, "w") as f:
    f.write(f"{os.waitstatus_to_exitcode(status)} {seconds} {usage.ru_maxrss} {len(killed)} "
            f"{usage.ru_utime + usage.ru_stime} {usage.ru_maxrss + sum(peaks.values())} "
            f"{kids.children_user + kids.children_system}")
"""


def run_measured(
    cmd: Sequence[str],
    *,
    cwd: Path,
    stdout: Path,
    stderr: Path,
    timeout: float,
    env: dict[str, str] | None = None,
) -> Measured:
    """Run cmd through LAUNCHER; the kill after `timeout` seconds keeps every run bounded."""
    result = cwd / "rusage.txt"
    launcher = [sys.executable, "-I", "-S", "-c", LAUNCHER, str(result), str(timeout)]
    with stdout.open("wb") as out, stderr.open("wb") as err:
        subprocess.run(
            [*launcher, *cmd],
            cwd=cwd,
            stdout=out,
            stderr=err,
            check=True,
            timeout=timeout + 30,
            env=env,
        )
    code, seconds, maxrss, killed, _, tree, tree_cpu = result.read_text().split()
    return Measured(
        int(code), float(seconds), int(maxrss) * 1024, killed != "0", float(tree_cpu),
        int(tree) * 1024,
    )  # fmt: skip


# ----- the baseline (runs as `ingest.py _baseline ...` in its own process) --------------


def touch(raw: bytes) -> int:
    """What any ingester does with a mail; returns the number of attachments."""
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    _ = (msg["subject"], msg["date"], msg["message-id"], msg["in-reply-to"], msg["to"])
    sender = msg["from"]
    if sender is not None:
        _ = [(a.display_name, a.addr_spec) for a in getattr(sender, "addresses", ())]
    body = msg.get_body(preferencelist=("plain", "html"))
    if body is not None:
        _ = body.get_content()
    count = 0
    for part in msg.iter_attachments():
        _ = (part.get_filename(), part.get_content_type(), part.get_content())
        count += 1
    return count


def baseline(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    stats = {"fetched": 0, "bytes": 0, "moved": 0, "parse_errors": 0, "attachments": 0}
    conn = imaplib.IMAP4(args.host, args.port, timeout=120)
    conn.starttls(ssl.create_default_context(cafile=args.ca_file))
    conn.login(args.user, args.password)
    typ, _ = conn.select(imap_quote(args.src))
    assert typ == "OK"
    typ, data = conn.uid("SEARCH", "ALL")
    uids = [u.decode() for u in (data[0] or b"").split()]
    for start in range(0, len(uids), FETCH_CHUNK):
        chunk = ",".join(uids[start : start + FETCH_CHUNK])
        typ, data = conn.uid("FETCH", chunk, "(BODY.PEEK[])")
        assert typ == "OK", data
        for item in data:
            if isinstance(item, tuple):
                stats["fetched"] += 1
                stats["bytes"] += len(item[1])
                try:
                    stats["attachments"] += touch(item[1])
                except Exception:  # a real loop would log it and go on
                    stats["parse_errors"] += 1
        del data
        typ, data = conn.uid("MOVE", chunk, imap_quote(args.dst))
        assert typ == "OK", data
        stats["moved"] += chunk.count(",") + 1
    conn.logout()
    stats["seconds"] = time.perf_counter() - started
    print(json.dumps(stats))
    return 0


# ----- the benchmark ------------------------------------------------------------------


@dataclass
class ThroughputRow:
    tool: str
    n: int
    raw_bytes: int
    seconds: float
    peak_rss: int
    moved: int
    left: int
    cpu_seconds: float = 0.0
    note: str = ""
    inner_seconds: float | None = None  # the daemon's own batch time / the loop's own time
    own_rss: int = 0  # peak RSS of the main process alone (peak_rss: with its workers)
    server_cpu_seconds: float | None = None  # PostgreSQL's, for a run on the PostgreSQL store

    @property
    def msgs_per_s(self) -> float:
        return self.n / self.seconds if self.seconds else 0.0

    @property
    def mb_per_s(self) -> float:
        return self.raw_bytes / MB / self.seconds if self.seconds else 0.0


@dataclass
class Results:
    machine: dict[str, str]
    mixes: dict[int, str] = field(default_factory=dict)
    throughput: list[ThroughputRow] = field(default_factory=list)
    latency: list[float] = field(default_factory=list)
    idle_delay: list[float] = field(default_factory=list)
    latency_note: str = ""
    huge: list[ThroughputRow] = field(default_factory=list)
    cluster: list[ClusterRow] = field(default_factory=list)


def machine() -> dict[str, str]:
    cpu = "unknown"
    with suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = "unknown"
    with suppress(OSError, ValueError, IndexError):
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f"{kb / 1024 / 1024:.1f} GiB"
    dovecot = subprocess.run(
        [shutil.which("dovecot") or "/usr/sbin/dovecot", "--version"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    commit = subprocess.run(
        ["git", "-C", str(REPO), "describe", "--always", "--dirty"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    # The package may be edited while a run goes on: say which of its files differ from HEAD.
    changed = subprocess.run(
        ["git", "-C", str(REPO), "status", "--porcelain", "--", "engage_listener"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.split("\n")
    changed = [Path(line[3:]).name for line in changed if line.strip()]
    return {
        "commit": commit or "unknown",
        "uncommitted in engage_listener/": ", ".join(changed) or "none",
        "nproc": str(os.cpu_count()),
        "cpu": cpu,
        "memory": mem,
        "python": platform.python_version(),
        "dovecot": dovecot,
        "kernel": platform.release(),
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def load() -> str:
    """The 1-minute load average: other work on the machine skews every figure."""
    with suppress(OSError):
        return Path("/proc/loadavg").read_text().split()[0]
    return "?"


class Bench:
    def __init__(self, root: Path, timeout_per_mail: float, workers: int | None = None) -> None:
        # Imported here: the baseline runs this file too, and must not pay for it. devkit
        # lives beside the package (never installed), so the checkout goes on the path.
        if str(REPO) not in sys.path:
            sys.path.insert(0, str(REPO))
        from devkit.dovecot import DovecotSandbox  # noqa: PLC0415

        self.root = root
        self.sandbox: DovecotSandbox = DovecotSandbox(root / "dovecot")
        self.password = self.sandbox.PASSWORD
        self.timeout_per_mail = timeout_per_mail
        self.serial = 0
        self.workers = workers  # Process/Workers of every daemon; None: its default
        self.fast_seed = False  # write the mails into the Maildir instead of APPEND

    def fresh_user(self, label: str) -> str:
        self.serial += 1
        return f"{label}-{self.serial}"

    def seed(self, label: str, raws: Iterable[bytes]) -> str:
        user = self.fresh_user(label)
        self.sandbox.create_folder(user, DONE)
        if self.fast_seed:
            self.sandbox.create_folder(user, NEW)
            references.maildir_seed(self.sandbox.home_dir / user / "Maildir" / NEW, raws)
            self.sandbox.count(user, NEW)  # Dovecot indexes them now, before any timing
        else:
            self.sandbox.append_many(user, NEW, raws)
        return user

    def drop_user(self, user: str) -> None:
        """Free the disk: the next measurement seeds a user of its own."""
        shutil.rmtree(self.sandbox.home_dir / user, ignore_errors=True)

    def workdir(self, name: str) -> Path:
        path = self.root / name
        path.mkdir(parents=True, exist_ok=False)
        return path

    def process_block(self) -> str:
        workers = f"<Workers>{self.workers}</Workers>" if self.workers is not None else ""
        return f'  <Process ID="EIS"><UseImapListener>True</UseImapListener>{workers}</Process>\n'

    def elements(self, user: str, **extra: str) -> dict[str, str]:
        return {
            "HostName": self.sandbox.host,
            "Port": str(self.sandbox.imap_port),
            "UserName": user,
            "Password": self.password,
            "UseSsl": "False",
            "CaFile": str(self.sandbox.ca_file),
            "InputFolder": NEW,
            "OutputFolder": DONE,
            "ExtractAttachments": "True",
            "RoutingHook": f"sql:{ROUTING_SQL}",
            "SyncMaxWaitTime": "60",
            "SyncMaxChangesCount": "10",
            **extra,
        }

    def config(self, work: Path, user: str, store: str | None = None, **extra: str) -> Path:
        """One listener on `user`; `store`: a <Store> element (default: SQLite beside it)."""
        path = work / "engage-listener.xml"
        path.write_text(self.xml(self.listener_block("Bench", user, **extra), store))
        return path

    def listener_block(self, lid: str, user: str, **extra: str) -> str:
        body = "".join(f"    <{k}>{v}</{k}>\n" for k, v in self.elements(user, **extra).items())
        return f'  <ImapListener ID="{lid}">\n{body}  </ImapListener>\n'

    def xml(self, listeners: str, store: str | None = None) -> str:
        """The whole configuration: `listeners`, the Process block (Workers), the store."""
        return (
            '<?xml version="1.0" encoding="utf-8"?>\n<EngageIntegrationService>\n'
            f"{listeners}"
            + self.process_block()
            + f"{store or '  <Store><Path>store.sqlite3</Path></Store>'}\n"
            "</EngageIntegrationService>\n"
        )

    # -- throughput ----------------------------------------------------------------

    def run_baseline(self, user: str, n: int, raw_bytes: int, tag: str) -> ThroughputRow:
        work = self.workdir(f"baseline-{tag}")
        cmd = [
            sys.executable, str(Path(__file__).resolve()), "_baseline",
            "--host", self.sandbox.host, "--port", str(self.sandbox.imap_port),
            "--ca-file", str(self.sandbox.ca_file), "--user", user,
            "--password", self.password, "--src", NEW, "--dst", DONE,
        ]  # fmt: skip
        m = run_measured(
            cmd,
            cwd=work,
            stdout=work / "stdout.json",
            stderr=work / "stderr.txt",
            timeout=60 + n * self.timeout_per_mail,
        )
        note, inner = self._note(m, work / "stderr.txt"), None
        with suppress(ValueError, OSError):
            stats = json.loads((work / "stdout.json").read_text())
            inner = stats["seconds"]
            if stats["parse_errors"]:
                note += f"{stats['parse_errors']} parse errors; "
        return self._row("baseline", user, n, raw_bytes, m, note, inner)

    def run_daemon(
        self,
        user: str,
        n: int,
        raw_bytes: int,
        tag: str,
        profile: Path | None = None,
        spy: tuple[str, Path] | None = None,
        tool: str = "engage-listener",
        prepared: tuple[Path, Path] | None = None,
        users: Sequence[str] = (),
        code: Path | None = None,
        pg: PgServer | None = None,
        **extra: str,
    ) -> ThroughputRow:
        database = None
        if prepared is not None:  # a work directory and configuration made by the caller
            work, config = prepared
        elif pg is not None:  # a fresh database, the routing function instead of the .sql
            work = self.workdir(f"engage-{tag}")
            url, database = pg.fresh()
            config = self.config(work, user, store_xml(url), **{"RoutingHook": PG_HOOK, **extra})
        else:
            work = self.workdir(f"engage-{tag}")
            config = self.config(work, user, **extra)
        cmd = [sys.executable]
        if profile is not None:
            cmd += ["-m", "cProfile", "-o", str(profile)]
        if spy is not None:  # every thread, waiting included: the store runs in a thread
            binary, out = spy
            cmd = [
                binary,
                "record",
                "--threads",
                "--idle",
                "--subprocesses",
                "--rate",
                str(SPY_RATE),
            ]
            cmd += ["--format", "raw", "--output", str(out), "--", sys.executable]
        cmd += ["-m", "engage_listener", "run", "--once", "--config", str(config)]
        slow = profile is not None or spy is not None
        env = None
        if code is not None:  # another checkout's package (an older commit, for comparison)
            compileall.compile_dir(code / "engage_listener", quiet=1)
            env = {**os.environ, "PYTHONPATH": str(code)}
        server_cpu = pg.cpu() if pg is not None else 0.0
        m = run_measured(
            cmd,
            cwd=work,
            stdout=work / "daemon.log",
            stderr=work / "stderr.txt",
            timeout=60 + n * self.timeout_per_mail * (5 if slow else 1),
            env=env,
        )
        server_cpu = pg.cpu() - server_cpu if pg is not None else 0.0
        note = self._note(m, work / "stderr.txt")
        log = events(work / "daemon.log")
        ends = [e for e in log if e.get("event") == "batch_end"]
        inner = sum(float(str(e.get("seconds", 0))) for e in ends) if ends else None
        failed = sum(int(str(e.get("failed", 0))) for e in ends)
        quarantined = sum(int(str(e.get("quarantined", 0))) for e in ends)
        if failed or quarantined:
            note += f"{failed} failed, {quarantined} quarantined; "
        note += self._store_note(work, pg, database)
        logs = sorted(work.glob("imap.log*"))
        if logs:
            note += f"protocol log {sum(f.stat().st_size for f in logs) / MB:.1f} MB; "
        row = self._row(tool, user, n, raw_bytes, m, note, inner, users)
        if pg is not None:
            row.server_cpu_seconds = server_cpu
            print(f"  {'':<16} PostgreSQL server CPU {server_cpu:.2f} s", flush=True)
        return row

    @staticmethod
    def _store_note(work: Path, pg: PgServer | None, database: str | None) -> str:
        """What the run left in its store: cases and attachments (and PostgreSQL's ledger)."""
        if pg is not None and database is not None:
            with suppress(Exception):
                return pg.counts(database) + "; "
            return ""
        with suppress(sqlite3.Error):
            db = sqlite3.connect(f"file:{work / 'store.sqlite3'}?mode=ro", uri=True)
            cases, atts = db.execute(
                "SELECT (SELECT count(*) FROM cases), (SELECT count(*) FROM attachments)"
            ).fetchone()
            db.close()
            return f"{cases} cases, {atts} attachments; "
        return ""

    @staticmethod
    def _note(m: Measured, stderr: Path) -> str:
        if m.timed_out:
            return "TIMED OUT (killed); "
        if m.returncode != 0:
            tail = stderr.read_text(errors="replace").strip().splitlines()[-1:] or [""]
            return f"exit {m.returncode}: {tail[0][:120]}; "
        return ""

    def _row(
        self,
        tool: str,
        user: str,
        n: int,
        raw_bytes: int,
        m: Measured,
        note: str,
        inner: float | None,
        users: Sequence[str] = (),
        moved_left: tuple[int, int] | None = None,
    ) -> ThroughputRow:
        users = list(users) or [user]
        if moved_left is None:
            moved = sum(self.sandbox.count(u, DONE) for u in users)
            left = sum(self.sandbox.count(u, NEW) for u in users)
        else:
            moved, left = moved_left
        row = ThroughputRow(
            tool=tool,
            n=n,
            raw_bytes=raw_bytes,
            seconds=m.seconds,
            peak_rss=m.tree_rss or m.peak_rss,
            own_rss=m.peak_rss,
            moved=moved,
            left=left,
            cpu_seconds=m.cpu_seconds,
            note=note.strip("; "),
            inner_seconds=inner,
        )
        print(
            f"  {tool:<16} N={n:<6} {row.seconds:8.2f} s (CPU {row.cpu_seconds:7.2f} s) "
            f"{row.msgs_per_s:9.1f} msg/s "
            f"{row.mb_per_s:7.2f} MB/s  peak RSS {mib(row.peak_rss):>6} MiB "
            f"(main {mib(row.own_rss)})  moved {moved}"
            f"{'  ' + row.note if row.note else ''}",
            flush=True,
        )
        for each in users:
            self.drop_user(each)
        return row

    def run_mbsync(self, user: str, n: int, raw_bytes: int, tag: str) -> ThroughputRow:
        """isync's mbsync copying the folder into a local Maildir, with its defaults."""
        work = self.workdir(f"mbsync-{tag}")
        rc = references.mbsync_config(
            work, host=self.sandbox.host, port=self.sandbox.imap_port, user=user,
            password=self.password, ca_file=self.sandbox.ca_file, folder=NEW,
        )  # fmt: skip
        binary = shutil.which("mbsync") or "mbsync"
        m = run_measured(
            [binary, "-c", str(rc), "-q", "bench"],
            cwd=work,
            stdout=work / "stdout.txt",
            stderr=work / "stderr.txt",
            timeout=60 + n * self.timeout_per_mail,
        )
        copied = references.maildir_count(work)
        note = self._note(m, work / "stderr.txt") + "copies, does not move; "
        row = self._row(MBSYNC_TOOL, user, n, raw_bytes, m, note, None, moved_left=(copied, n))
        shutil.rmtree(work / "maildir", ignore_errors=True)
        return row

    def many(self, listeners: int, each: int, results: Results) -> None:
        """One daemon, `listeners` IMAP listeners of `each` mails (aggregate msgs/s)."""
        corpus = mailgen.corpus(each)
        n = listeners * each
        print(f"{listeners} listeners x {each} mails in one daemon", flush=True)
        with ThreadPoolExecutor(2) as pool:
            users = list(pool.map(lambda i: self.seed(f"many{i}", corpus.messages),
                                  range(listeners)))  # fmt: skip
        work = self.workdir(f"many-{listeners}x{each}")
        config = references.many_config(
            work / "engage-listener.xml", users, self.elements(users[0])
        )
        text = config.read_text().replace(
            '  <Process ID="EIS"><UseImapListener>True</UseImapListener></Process>\n',
            self.process_block(),
        )
        config.write_text(text)
        row = self.run_daemon(
            users[0], n, corpus.total_bytes * listeners, f"many-{listeners}x{each}",
            tool=MANY_TOOL, prepared=(work, config), users=users,
        )  # fmt: skip
        results.throughput.append(row)

    def growth(self, mails: int, results: Results) -> None:
        """1,000 mails into an empty store, into one of 1,000 mails (the seed run) and
        into one grown to `mails` by copying the seed run's rows (references.grow_store)."""
        seed = mailgen.corpus(2000).messages[1000:]  # other mails than the measured ones
        corpus = mailgen.corpus(1000)
        user = self.seed("seed", seed)
        seed_row = self.run_daemon(user, len(seed), sum(map(len, seed)), "growth-seed")
        store = self.root / "engage-growth-seed" / "store.sqlite3"
        print(f"  seed run: {seed_row.note}", flush=True)
        for label, copies in (("empty", None), ("1k", 0), ("grown", mails // 1000 - 1)):
            work = self.workdir(f"growth-{label}")
            if copies is not None:
                shutil.copy(store, work / "store.sqlite3")
                total = references.grow_store(work / "store.sqlite3", copies)
                print(f"  store {label}: {total} messages before the batch", flush=True)
            else:
                total = 0
            user = self.seed(f"growth-{label}", corpus.messages)
            config = self.config(work, user)
            row = self.run_daemon(
                user, 1000, corpus.total_bytes, f"growth-{label}", tool=f"{GROW_TOOL}@{total}",
                prepared=(work, config),
            )  # fmt: skip
            results.throughput.append(row)

    def run_graph(self, messages: Sequence[bytes], n: int, raw_bytes: int) -> ThroughputRow:
        """The same corpus through a Graph listener against the Graph imitation."""
        from graph_ingest import graph_run  # noqa: PLC0415 - only with --source graph

        work = self.workdir(f"graph-{n}")
        timeout = 60 + n * self.timeout_per_mail * 3
        m, moved, left, note = graph_run(work, messages, timeout, run_measured)
        note = self._note(m, work / "stderr.txt") + note
        row = ThroughputRow(GRAPH_TOOL, n, raw_bytes, m.seconds, m.tree_rss, moved, left,
                            m.cpu_seconds, note.strip("; "), own_rss=m.peak_rss)  # fmt: skip
        print(
            f"  {GRAPH_TOOL:<16} N={n:<6} {row.seconds:8.2f} s (CPU {row.cpu_seconds:7.2f} s) "
            f"{row.msgs_per_s:9.1f} msg/s  peak RSS {mib(row.peak_rss):>6} MiB  moved {moved}"
            f"  {row.note}",
            flush=True,
        )
        return row

    def throughput(
        self,
        n: int,
        results: Results,
        protocol_log: bool = False,
        sources: Sequence[str] = ("imap",),
        also_workers: Sequence[int] = (),
        also_code: Sequence[Path] = (),
        pg: PgServer | None = None,
    ) -> None:
        corpus = mailgen.corpus(n)
        results.mixes[n] = corpus.summary()
        print(f"N={n}: {corpus.summary()}", flush=True)
        started = time.perf_counter()
        tools = ["baseline", "engage"] + (["mbsync"] if "mbsync" in sources else [])
        tools += ["postgres"] if pg is not None else []
        with ThreadPoolExecutor(2) as pool:  # every mailbox at once; nothing is measured yet
            users = dict(
                zip(
                    tools,
                    pool.map(lambda tool: self.seed(f"{tool}-{n}", corpus.messages), tools),
                    strict=True,
                )
            )
        print(f"  seeded {len(tools)} mailboxes in {time.perf_counter() - started:.1f} s",
              flush=True)  # fmt: skip
        results.throughput.append(
            self.run_baseline(users["baseline"], n, corpus.total_bytes, str(n))
        )
        if "mbsync" in users:
            results.throughput.append(
                self.run_mbsync(users["mbsync"], n, corpus.total_bytes, str(n))
            )
        results.throughput.append(self.run_daemon(users["engage"], n, corpus.total_bytes, str(n)))
        if pg is not None:  # right after SQLite's run, the same corpus
            row = self.run_daemon(
                users["postgres"], n, corpus.total_bytes, f"pg-{n}", tool=PG_TOOL, pg=pg
            )
            results.throughput.append(row)
        default = self.workers
        for workers in also_workers:  # the same run with another Process/Workers
            self.workers = workers
            user = self.seed(f"w{workers}-{n}", corpus.messages)
            results.throughput.append(
                self.run_daemon(
                    user, n, corpus.total_bytes, f"w{workers}-{n}", tool=f"engage-w{workers}"
                )
            )
            self.workers = default
        for code in also_code:  # the same run with another checkout's daemon
            self.workers, label = None, code.name
            user = self.seed(f"{label}-{n}", corpus.messages)
            results.throughput.append(
                self.run_daemon(
                    user, n, corpus.total_bytes, f"{label}-{n}", tool=f"engage@{label}", code=code
                )
            )
            self.workers = default
        if "graph" in sources:
            results.throughput.append(self.run_graph(corpus.messages, n, corpus.total_bytes))
        if protocol_log:  # the same run with the IMAP protocol log on, as operators use it
            user = self.seed(f"protolog-{n}", corpus.messages)
            row = self.run_daemon(
                user, n, corpus.total_bytes, f"protolog-{n}", tool=PROTOLOG_TOOL,
                ProtocolLogFile="imap.log", ProtocolLogMaxSize=str(1 << 30),
            )  # fmt: skip
            results.throughput.append(row)

    def floor(self, results: Results) -> None:
        """Both tools on an empty folder: start-up cost and the RSS every run pays."""
        print("N=0 (empty folder: start-up time and base RSS)", flush=True)
        for tool in ("baseline", "engage-listener"):
            user = self.seed(f"{tool}-0", [])
            run = self.run_baseline if tool == "baseline" else self.run_daemon
            results.throughput.append(run(user, 0, 0, "0"))

    def huge(self, size: int, results: Results) -> None:
        raw = mailgen.huge_message(size)
        print(f"One mail of {len(raw) / MB:.1f} MB", flush=True)
        for tool in ("baseline", "engage-listener"):
            user = self.seed(f"{tool}-huge", [raw])
            run = self.run_baseline if tool == "baseline" else self.run_daemon
            results.huge.append(run(user, 1, len(raw), "huge"))

    def profile(
        self,
        n: int,
        out: Path | None,
        spy: tuple[str, Path] | None,
        pg: PgServer | None = None,
        code: Path | None = None,
    ) -> None:
        """The daemon once more on n mails, under cProfile and/or py-spy (RSS meaningless);
        with `pg`, on the PostgreSQL store; with `code`, from that checkout."""
        corpus = mailgen.corpus(n)
        for kind, target in (("cProfile", out), ("py-spy", spy[1] if spy else None)):
            if target is None:
                continue
            user = self.seed(f"profile-{n}", corpus.messages)
            print(f"Profiling the daemon with {kind} on {n} mails -> {target}", flush=True)
            tag = f"{kind.lower()}-{n}" + (f"-{code.name}" if code is not None else "")
            if kind == "cProfile":
                self.run_daemon(user, n, corpus.total_bytes, tag, profile=target, pg=pg, code=code)
            else:
                self.run_daemon(user, n, corpus.total_bytes, tag, spy=spy, pg=pg, code=code)

    # -- latency -------------------------------------------------------------------

    def latency(self, rounds: int, results: Results) -> None:
        print(f"Latency: {rounds} rounds of 9 + 1 APPENDs, SyncMaxChangesCount 10", flush=True)
        results.idle_delay = self._idle_delays(rounds)
        print(
            f"  server IDLE notification: median {statistics.median(results.idle_delay) * 1e3:.1f}"
            f" ms, p90 {p90(results.idle_delay) * 1e3:.1f} ms",
            flush=True,
        )
        results.latency, results.latency_note = self._daemon_latency(rounds)
        print(
            f"  APPEND -> 10 cases committed: median "
            f"{statistics.median(results.latency) * 1e3:.1f} ms, p90 "
            f"{p90(results.latency) * 1e3:.1f} ms{results.latency_note}",
            flush=True,
        )

    def _imap(self, user: str) -> imaplib.IMAP4:
        conn = imaplib.IMAP4(self.sandbox.host, self.sandbox.imap_port, timeout=30)
        conn.login(user, self.password)
        return conn

    @staticmethod
    def _append(conn: imaplib.IMAP4, raw: bytes) -> None:
        typ, data = conn.append(imap_quote(NEW), "", None, raw)
        if typ != "OK":
            raise RuntimeError(f"APPEND failed: {data!r}")

    def _idle_delays(self, rounds: int) -> list[float]:
        """APPEND from one session, time until "* n EXISTS" reaches an IDLE session."""
        user = self.seed("idle", [])
        appender, idler = self._imap(user), self._imap(user)
        lines: queue.Queue[tuple[float, bytes]] = queue.Queue()
        delays = []
        try:
            idler.select(imap_quote(NEW))
            tag = idler._new_tag()  # imaplib has no IDLE before Python 3.14
            idler.send(tag + b" IDLE\r\n")
            if not idler.readline().startswith(b"+"):
                raise RuntimeError("IDLE refused")

            def read() -> None:
                while line := idler.readline():
                    lines.put((time.perf_counter(), line))
                    if line.startswith(tag):
                        return

            reader = threading.Thread(target=read, daemon=True)
            reader.start()
            for r in range(rounds):
                for k in range(9):
                    self._append(appender, mailgen.simple_message(f"i{r}-{k}"))
                time.sleep(0.3)
                while not lines.empty():
                    lines.get_nowait()
                self._append(appender, mailgen.simple_message(f"i{r}-9"))
                sent = time.perf_counter()
                while True:
                    when, line = lines.get(timeout=10)
                    if line.endswith(b"EXISTS\r\n"):
                        delays.append(when - sent)
                        break
            idler.send(b"DONE\r\n")
            reader.join(10)
        finally:
            for conn in (appender, idler):
                with suppress(imaplib.IMAP4.error, OSError):
                    conn.logout()
            self.drop_user(user)
        return delays

    def _daemon_latency(self, rounds: int) -> tuple[list[float], str]:
        user = self.seed("latency", [])
        work = self.workdir("latency")
        config = self.config(work, user, SyncMaxWaitTime="600", SyncMaxChangesCount="10")
        log, db_path = work / "daemon.log", work / "store.sqlite3"
        cmd = [sys.executable, "-m", "engage_listener", "run", "--config", str(config)]
        with log.open("wb") as out:
            daemon = subprocess.Popen(cmd, cwd=work, stdout=out, stderr=subprocess.STDOUT)
        appender = None
        latencies: list[float] = []
        try:

            def batches() -> int:
                return sum(1 for e in events(log) if e.get("event") == "batch_end")

            wait_for(lambda: batches() >= 1, 60, "the daemon's start-up batch")
            time.sleep(0.5)  # it is now in IDLE
            appender = self._imap(user)
            db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)

            def cases() -> int:
                return int(db.execute("SELECT count(*) FROM cases").fetchone()[0])

            for r in range(rounds):
                before, done = cases(), batches()
                for k in range(9):
                    self._append(appender, mailgen.simple_message(f"d{r}-{k}"))
                time.sleep(0.3)  # the daemon has counted the first nine
                self._append(appender, mailgen.simple_message(f"d{r}-9"))
                sent = time.perf_counter()
                wait_for(lambda b=before: cases() >= b + 10, 30, "10 new cases", step=0.002)
                latencies.append(time.perf_counter() - sent)
                wait_for(lambda d=done: batches() > d, 30, "the batch to end")
                time.sleep(0.2)
            db.close()
        finally:
            if appender is not None:
                with suppress(imaplib.IMAP4.error, OSError):
                    appender.logout()
            daemon.send_signal(signal.SIGTERM)
            try:
                daemon.wait(15)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait(5)
            self.drop_user(user)
        reasons = [e.get("reason") for e in events(log) if e.get("event") == "batch_start"]
        other = [r for r in reasons[1:] if r != "count"]
        note = f" (batches not started by count: {other})" if other else ""
        return latencies, note


# ----- report -------------------------------------------------------------------------


def spy_summary(path: Path, rate: int = SPY_RATE, top: int = 25) -> str:
    """Seconds per thread of a py-spy raw (collapsed) profile: where each thread was
    (leaf frame, waiting included), and the inclusive time of engage_listener's functions
    (counted once per sample however deeply they recurse)."""
    threads: dict[str, int] = {}
    leaves: dict[str, dict[str, int]] = {}
    ours: dict[str, dict[str, int]] = {}
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        parts = stack.split(";")
        at = next((i for i, part in enumerate(parts) if part.startswith("thread (")), 0)
        kind = "parse workers" if "parse_worker" in ";".join(parts[:at]) else "daemon"
        thread, frames = parts[at], parts[at + 1 :]
        name = thread.split(":", 1)[-1].strip() if ":" in thread else "(unnamed)"
        thread = f"{kind}, {name.rstrip('_0123456789') or name}"
        threads[thread] = threads.get(thread, 0) + int(count)
        if frames:
            leaf = leaves.setdefault(thread, {})
            leaf_name = _frame_name(frames[-1])
            leaf[leaf_name] = leaf.get(leaf_name, 0) + int(count)
        per = ours.setdefault(thread, {})
        for ours_name in dict.fromkeys(_frame_name(f) for f in frames if "engage_listener" in f):
            per[ours_name] = per.get(ours_name, 0) + int(count)
    out = []
    for thread, samples in sorted(threads.items(), key=lambda kv: -kv[1]):
        out.append(f"thread {thread}: {samples / rate:.2f} s sampled; where it was:")
        for title, table in (("", leaves), ("engage_listener, inclusive:", ours)):
            ranked = sorted(table.get(thread, {}).items(), key=lambda kv: -kv[1])[:top]
            if title and ranked:
                out.append(f"  {title}")
            for name, count in ranked:
                out.append(f"  {count / rate:7.2f} s {100 * count / samples:5.1f}%  {name}")
    return "\n".join(out)


def _frame_name(frame: str) -> str:
    """'Batch.run (/x/engage_listener/batch.py:116)' -> 'Batch.run (engage_listener/batch.py)'."""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")").rsplit(":", 1)[0]
    parts = Path(where).parts
    short = "/".join(parts[-2:]) if "engage_listener" in parts[-2:-1] else Path(where).name
    return f"{name} ({short})"


def report(results: Results, sizes: Sequence[int]) -> tuple[str, list[str]]:
    """The printed table, and the lines of the target check."""
    lines = ["", "Machine: " + ", ".join(f"{k} {v}" for k, v in results.machine.items()), ""]
    lines.append(
        f"{'tool':<16} {'N':>6} {'MB':>7} {'wall s':>7} {'work s':>7} {'CPU s':>7} "
        f"{'msgs/s':>7} {'MB/s':>6} {'peak RSS MiB':>12} {'moved':>6} {'left':>4}  notes"
    )
    for row in results.throughput + results.huge:
        work = f"{row.inner_seconds:>7.2f}" if row.inner_seconds is not None else f"{'-':>7}"
        lines.append(
            f"{row.tool:<16} {row.n:>6} {row.raw_bytes / MB:>7.1f} {row.seconds:>7.2f} {work} "
            f"{row.cpu_seconds:>7.2f} {row.msgs_per_s:>7.1f} {row.mb_per_s:>6.2f} "
            f"{mib(row.peak_rss):>12} {row.moved:>6} {row.left:>4}  {row.note}"
        )
    lines.append(
        "wall s: spawn to exit of the process (msgs/s and MB/s use it); work s: the "
        "daemon's batch time from its log, the baseline's own loop time; CPU s: user + "
        "system time of the process alone (Dovecot's is not counted)"
    )
    checks: list[str] = []
    by = {(r.tool, r.n): r for r in results.throughput}
    lines.append("")
    for n in sizes:
        base, el = by.get(("baseline", n)), by.get(("engage-listener", n))
        if base and el and base.msgs_per_s:
            speedup = el.msgs_per_s / base.msgs_per_s
            rss = el.peak_rss / base.peak_rss if base.peak_rss else 0.0
            cpu = base.cpu_seconds / el.cpu_seconds if el.cpu_seconds else 0.0
            lines.append(
                f"N={n}: engage-listener / baseline: msgs/s x{speedup:.2f} "
                f"(msgs per CPU second x{cpu:.2f}), peak RSS x{rss:.2f}"
            )
            logged = by.get((PROTOLOG_TOOL, n))
            if logged and el.msgs_per_s:
                share = logged.msgs_per_s / el.msgs_per_s
                lines.append(f"N={n}: with the protocol log on: msgs/s x{share:.2f} of without")
            postgres = by.get((PG_TOOL, n))
            if postgres and el.msgs_per_s:
                ratio = postgres.msgs_per_s / el.msgs_per_s
                server = postgres.server_cpu_seconds or 0.0
                lines.append(
                    f"N={n}: PostgreSQL / SQLite store: msgs/s x{ratio:.2f}; CPU per mail "
                    f"{1e3 * postgres.cpu_seconds / n:.2f} ms (server {1e3 * server / n:.2f}) "
                    f"against {1e3 * el.cpu_seconds / n:.2f} ms"
                )
                checks.append(
                    f"{'PASS' if ratio >= TARGET_PG_RATIO else 'MISS'} PostgreSQL N={n}: "
                    f"x{ratio:.2f} SQLite's msgs/s (target >= x{TARGET_PG_RATIO:g})"
                )
            for row in results.throughput:  # the other daemons of the same run
                if row.n == n and row.tool.startswith("engage") and row is not el:
                    lines.append(
                        f"N={n}: {row.tool} / baseline: msgs/s "
                        f"x{row.msgs_per_s / base.msgs_per_s:.2f}, CPU s per 1,000 mails "
                        f"{1000 * row.cpu_seconds / n:.2f} (engage-listener "
                        f"{1000 * el.cpu_seconds / n:.2f})"
                    )
            native = by.get((MBSYNC_TOOL, n))
            if native and native.msgs_per_s:
                versus = el.msgs_per_s / native.msgs_per_s
                lines.append(
                    f"N={n}: engage-listener / mbsync: msgs/s x{versus:.2f}; mbsync / "
                    f"baseline x{native.msgs_per_s / base.msgs_per_s:.2f}"
                )
                if n >= 10_000:
                    checks.append(
                        f"{'PASS' if versus >= 1 else 'MISS'} N={n}: x{versus:.2f} mbsync's "
                        "msgs/s (target >= x1, doing the whole job)"
                    )
            ok = speedup >= TARGET_SPEEDUP
            checks.append(
                f"{'PASS' if ok else 'MISS'} throughput N={n}: x{speedup:.2f} the baseline's "
                f"msgs/s (target >= x{TARGET_SPEEDUP:g})"
            )
    grown = [r for r in results.throughput if r.tool.startswith(GROW_TOOL)]
    if grown:
        empty = grown[0]  # the first: an empty store
        for row in grown:
            work = row.inner_seconds or row.seconds
            base = empty.inner_seconds or empty.seconds
            lines.append(
                f"{row.tool}: {1000 * work / row.n:.2f} ms a mail (batch time), "
                f"{1000 * row.cpu_seconds / row.n:.2f} ms CPU a mail; x{work / base:.2f} and "
                f"x{row.cpu_seconds / empty.cpu_seconds:.2f} the empty store's"
            )
        last = grown[-1]
        ratio = (last.inner_seconds or last.seconds) / (empty.inner_seconds or empty.seconds)
        checks.append(
            f"{'PASS' if ratio <= 1.10 else 'MISS'} store growth: x{ratio:.2f} the per-mail "
            f"time of an empty store with {last.tool.split('@')[-1]} mails stored "
            "(target <= x1.10)"
        )
    for row in results.throughput:
        if row.tool == MANY_TOOL:
            lines.append(
                f"{row.tool}: {row.n} mails over all listeners, aggregate {row.msgs_per_s:.1f} "
                f"msgs/s, {1000 * row.cpu_seconds / row.n:.2f} CPU s per 1,000 mails, peak RSS "
                f"{mib(row.peak_rss)} MiB (main process {mib(row.own_rss)} MiB)"
            )
    el_rows = [r for r in results.throughput if r.tool == "engage-listener" and r.n > 0]
    if el_rows:
        biggest = max(el_rows, key=lambda r: r.n)
        flat = " -> ".join(f"{mib(r.peak_rss)} MiB @ {r.n}" for r in el_rows)
        if biggest.n >= 10_000:
            ok = biggest.peak_rss < TARGET_RSS_10K
            checks.append(
                f"{'PASS' if ok else 'MISS'} peak RSS at N={biggest.n}: {mib(biggest.peak_rss)} "
                f"MiB (target < {mib(TARGET_RSS_10K)} MiB)"
            )
        smallest = min(el_rows, key=lambda r: r.n)
        if biggest.n > smallest.n and smallest.peak_rss:
            growth = biggest.peak_rss - smallest.peak_rss
            flat += (
                f" ({growth / MIB:+.1f} MiB, {100 * growth / smallest.peak_rss:+.0f}% for "
                f"x{biggest.n / smallest.n:g} the mails)"
            )
        checks.append(f"INFO peak RSS as N grows: {flat}")
    for row in results.huge:
        factor = row.peak_rss / row.raw_bytes
        lines.append(
            f"{row.raw_bytes / MB:.1f} MB mail, {row.tool}: peak RSS {mib(row.peak_rss)} MiB "
            f"= x{factor:.2f} its size"
        )
        if row.tool == "engage-listener":
            ok = factor < TARGET_HUGE_FACTOR
            checks.append(
                f"{'PASS' if ok else 'MISS'} {row.raw_bytes / MB:.0f} MB mail: peak RSS "
                f"x{factor:.2f} its size (target < x{TARGET_HUGE_FACTOR:g})"
            )
    if results.latency and results.idle_delay:
        lat, idle = statistics.median(results.latency), statistics.median(results.idle_delay)
        lines.append(
            f"Latency, APPEND of the 10th mail -> its batch's 10 cases committed "
            f"({len(results.latency)} rounds): median {lat * 1e3:.1f} ms, "
            f"p90 {p90(results.latency) * 1e3:.1f} ms{results.latency_note}"
        )
        lines.append(
            f"Server IDLE notification delay (bare imaplib IDLE): median {idle * 1e3:.1f} ms, "
            f"p90 {p90(results.idle_delay) * 1e3:.1f} ms; "
            f"difference of medians {(lat - idle) * 1e3:.1f} ms"
        )
        ok = lat - idle <= TARGET_LATENCY_OVER_IDLE
        checks.append(
            f"{'PASS' if ok else 'MISS'} latency: median {(lat - idle) * 1e3:.0f} ms over the "
            f"server's IDLE delay (target <= {TARGET_LATENCY_OVER_IDLE * 1e3:.0f} ms)"
        )
    if results.cluster:
        lines += cluster_report(results.cluster)
    return "\n".join(lines), checks


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["_baseline"]:
        sub = argparse.ArgumentParser(prog="ingest.py _baseline")
        for name in ("host", "ca-file", "user", "password", "src", "dst"):
            sub.add_argument(f"--{name}", required=True)
        sub.add_argument("--port", type=int, required=True)
        return baseline(sub.parse_args(argv[1:]))

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sizes", default="1000,10000", help="comma-separated mail counts (default 1000,10000)"
    )
    parser.add_argument("--rounds", type=int, default=20, help="latency rounds (default 20)")
    parser.add_argument(
        "--huge-mb", type=float, default=50, help="size of the single big mail (default 50 MB)"
    )
    parser.add_argument("--skip", default="", help="comma-separated: throughput,latency,huge")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="OUT.prof",
        help="afterwards, run the daemon once more under cProfile on the first size "
        "(it sees the event-loop thread only, not the store's threads)",
    )
    parser.add_argument(
        "--py-spy",
        type=Path,
        metavar="OUT.txt",
        help="afterwards, run the daemon once more under py-spy (all threads, waiting "
        "included; raw collapsed stacks) on the first size, and summarize it",
    )
    parser.add_argument("--py-spy-bin", default="py-spy", help="the py-spy executable")
    parser.add_argument(
        "--timeout-per-mail",
        type=float,
        default=0.06,
        help="each run is killed after 60 s + N x this (default 0.06 s)",
    )
    parser.add_argument(
        "--protocol-log",
        action="store_true",
        help="also run the daemon on each size with its IMAP protocol log on",
    )
    parser.add_argument(
        "--source",
        default="imap",
        help="comma-separated: imap (always), mbsync (isync's mbsync into a Maildir, beside "
        "the baseline), graph (also a Graph listener against the Graph imitation, same "
        "corpus, beside IMAP's rows)",
    )
    parser.add_argument(
        "--workers", type=int, help="Process/Workers of the daemon (default: its own, one per CPU)"
    )
    parser.add_argument(
        "--also-workers",
        default="",
        help="comma-separated: the daemon once more per size "
        "with each of these Process/Workers (rows engage-wN)",
    )
    parser.add_argument(
        "--also-code",
        default="",
        help="comma-separated checkout directories: the daemon "
        "once more per size from each (rows engage@DIRNAME; e.g. an older commit's tree)",
    )
    parser.add_argument(
        "--many",
        default="",
        metavar="LxN",
        help="also one daemon with L listeners of N mails each (e.g. 20x500)",
    )
    parser.add_argument(
        "--growth",
        type=int,
        default=0,
        metavar="MAILS",
        help="also 1,000 mails into an empty store and into one of MAILS mails (e.g. 100000)",
    )
    parser.add_argument(
        "--fast-seed",
        action="store_true",
        help="seed mailboxes by writing the mails into Dovecot's Maildir (then STATUS, so "
        "that Dovecot indexes them before anything is timed) instead of APPEND, which "
        "takes minutes for 10,000 mails on a loaded machine",
    )
    parser.add_argument(
        "--store",
        default="sqlite",
        help="comma-separated: sqlite (always), postgres (also each size on a PostgreSQL "
        "store, a private server the script starts)",
    )
    parser.add_argument(
        "--daemons",
        default="",
        help="e.g. 1,2: afterwards, that many daemon processes over 8 mailboxes on one "
        "PostgreSQL, on the first size (needs no --store postgres)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    sources = [s.strip() for s in args.source.split(",") if s.strip()]
    stores = {s.strip() for s in args.store.split(",") if s.strip()}
    daemons = [int(d) for d in args.daemons.split(",") if d.strip()]

    if "mbsync" in sources and shutil.which("mbsync") is None:
        parser.error("--source mbsync: mbsync not found (Debian: apt-get install isync)")
    spy = None
    if args.py_spy is not None:
        binary = shutil.which(args.py_spy_bin)
        if binary is None:
            parser.error(f"--py-spy: {args.py_spy_bin} not found (pip install py-spy)")
        spy = (str(Path(binary).resolve()), args.py_spy.resolve())  # runs in the work dir

    # An installed package is byte-compiled (pip does it); a checkout run with
    # PYTHONDONTWRITEBYTECODE set would compile every module at each start, while the
    # baseline's stdlib modules come compiled.
    compileall.compile_dir(REPO / "engage_listener", quiet=1)
    results = Results(machine())
    load_at_start = load()
    root = Path(tempfile.mkdtemp(prefix="engage-bench-"))
    bench = Bench(root, args.timeout_per_mail, args.workers)
    bench.fast_seed = args.fast_seed
    also = [int(w) for w in args.also_workers.split(",") if w.strip()]
    codes = [Path(c).resolve() for c in args.also_code.split(",") if c.strip()]
    started = time.perf_counter()
    print(f"Work directory {root}; Dovecot on 127.0.0.1:{bench.sandbox.imap_port}", flush=True)
    bench.sandbox.start()
    pg: PgServer | None = None
    ours: PgServer | None = None
    try:
        if "postgres" in stores or daemons:
            pg = PgServer()
            pg.start()
            results.machine["postgresql"] = pg.version()
            ours = pg if "postgres" in stores else None  # the PostgreSQL run of each size
        if "throughput" not in skip:
            bench.floor(results)
            for n in sizes:
                bench.throughput(n, results, args.protocol_log, sources, also, codes, ours)
        if daemons and pg is not None:
            corpus = mailgen.corpus(sizes[0])
            print(f"Daemons over 8 mailboxes, one PostgreSQL, N={sizes[0]}", flush=True)
            for count in daemons:
                results.cluster.append(cluster_run(bench, pg, corpus.messages, count))
        if args.many:
            listeners, each = (int(x) for x in args.many.lower().split("x"))
            bench.many(listeners, each, results)
        if args.growth:
            bench.growth(args.growth, results)
        if "latency" not in skip and args.rounds > 0:
            bench.latency(args.rounds, results)
        if "huge" not in skip:
            bench.huge(int(args.huge_mb * MB), results)
        if args.profile is not None or spy is not None:
            profile = args.profile.resolve() if args.profile is not None else None
            bench.profile(sizes[0], profile, spy, ours)
            for code in codes:  # the same profile of each other checkout, in this run
                bench.profile(
                    sizes[0],
                    profile and profile.with_suffix(f".{code.name}{profile.suffix}"),
                    spy and (spy[0], spy[1].with_suffix(f".{code.name}{spy[1].suffix}")),
                    ours,
                    code,
                )
    finally:
        if pg is not None:
            pg.stop()
        bench.sandbox.stop()
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)

    results.machine["load average (start, end)"] = f"{load_at_start}, {load()}"
    table, checks = report(results, sizes)
    print(table)
    print("\nTargets:\n" + "\n".join("  " + c for c in checks))
    print(f"\n(total {time.perf_counter() - started:.0f} s)")
    if args.profile is not None:
        print(f"\nTop cumulative entries of {args.profile} (event-loop thread only):")
        pstats.Stats(str(args.profile)).sort_stats("cumulative").print_stats(30)
    if args.py_spy is not None and args.py_spy.exists():
        print(f"\npy-spy, inclusive seconds per thread and function ({args.py_spy}):")
        print(spy_summary(args.py_spy))
    if args.json is not None:
        payload = asdict(results)
        payload["checks"] = checks
        args.json.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
