"""A throwaway PostgreSQL on loopback for the tests and the benchmarks.

The PostgreSQL store (issue 16) is tested and measured against the real server, never a
mock: this module drives the `initdb`, `postgres` and `psql` binaries of Debian's
`postgresql` package from a temporary folder it owns. No system service
(`postgresql@15-main`) is ever started, stopped, configured or connected to.

    with PostgresServer() as server:        # initdb + start: 1-5 s
        connect(server.url)                 # postgresql://engage:PW@127.0.0.1:PORT/engage
        server.restart()                    # same port, same data
    # stopped, folder removed, no process left

Decisions:
- `postgres` runs as a child of this process (not daemonised by `pg_ctl`), in a session of
  its own: the owner knows its pid, and a finalizer stops it at interpreter exit, so an
  interrupted test run does not leave a server behind.
- As root: PostgreSQL refuses to run as root, so the cluster belongs to `nobody` (no account
  to create or remove). Its folder is a fresh `mkdtemp` in the system temp directory, because
  `nobody` cannot traverse pytest's private 0700 folders.
- Durability is real: fsync, synchronous_commit and full_page_writes stay on, because the
  benchmarks measure commits. Only initdb's own final sync is skipped (`--no-sync`): the
  bootstrap of a throwaway cluster needs no durability, and that sync costs seconds on a busy
  disk.
- Authentication is real too: over TCP every role needs its password (scram-sha-256), and
  the application's role is no superuser (it owns its database, as in production). The unix
  socket, in the 0700 folder that only the server's account and root can reach, trusts: it
  serves `sql()`.
- Stopping is a fast shutdown (SIGINT: sessions cut, checkpoint), then an immediate one
  (SIGQUIT), then SIGKILL of the postmaster and each of its children: every backend leads a
  process group of its own, so signalling the postmaster's group would miss them.
"""

from __future__ import annotations

import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import weakref
from collections.abc import Mapping
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self
from urllib.parse import quote

from devkit import processes

__all__ = ["BIN_ENV", "PostgresError", "PostgresServer", "find_bin_dir", "free_port"]

BIN_ENV = "ENGAGE_PG_BIN"  # a folder holding initdb, postgres and psql; overrides the search
_TOOLS = ("initdb", "postgres", "psql")
_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}\Z")
_SUPERUSER = "postgres"
_START_SECONDS = 60.0
_FAST_STOP_SECONDS = 60.0  # a fast shutdown checkpoints: slow on a shared, busy disk
_HARD_STOP_SECONDS = 10.0

# Sensible for tests: room for many pools, little memory, everything durable.
SETTINGS: Mapping[str, str] = {
    "max_connections": "100",
    "shared_buffers": "32MB",
    "fsync": "on",
    "synchronous_commit": "on",
    "full_page_writes": "on",
    "timezone": "UTC",
    "log_timezone": "UTC",
    "logging_collector": "off",
    "log_line_prefix": "%m [%p] %q%u@%d ",
}


class PostgresError(RuntimeError):
    """The server could not be set up, started or stopped (the message ends with its log)."""


def free_port() -> int:
    """A loopback port nobody listens on right now (racy, but fine for tests)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def find_bin_dir() -> Path | None:
    """The folder with initdb, postgres and psql, or None when PostgreSQL is not installed.

    `$ENGAGE_PG_BIN` if set; else Debian's newest `/usr/lib/postgresql/N/bin`; else the one
    on PATH (other distributions put initdb there).
    """
    candidates: list[Path] = []
    if configured := os.environ.get(BIN_ENV):
        candidates.append(Path(configured))
    else:
        debian = Path("/usr/lib/postgresql").glob("*/bin")
        candidates += sorted(debian, key=lambda p: _major(p.parent.name), reverse=True)
        if found := shutil.which("initdb"):
            candidates.append(Path(found).resolve().parent)
    for folder in candidates:
        if all((folder / tool).is_file() for tool in _TOOLS):
            return folder
    return None


def _major(name: str) -> int:
    return int(name) if name.isdigit() else -1


def _shut_down(proc: subprocess.Popen[bytes], mode: Literal["fast", "immediate"]) -> None:
    """Stop the postmaster and make sure none of its processes outlives it."""
    left = processes.children(proc.pid)
    if proc.poll() is None:
        first = signal.SIGINT if mode == "fast" else signal.SIGQUIT
        with suppress(ProcessLookupError):
            proc.send_signal(first)
        try:
            proc.wait(_FAST_STOP_SECONDS if mode == "fast" else _HARD_STOP_SECONDS)
        except subprocess.TimeoutExpired:
            left |= processes.children(proc.pid)
            with suppress(ProcessLookupError):
                proc.send_signal(signal.SIGQUIT if mode == "fast" else signal.SIGKILL)
            try:
                proc.wait(_HARD_STOP_SECONDS)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    # Orphaned backends notice the postmaster's death by themselves; these did not.
    for pid in processes.wait_gone(left, _HARD_STOP_SECONDS):
        with suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


@dataclass
class _State:
    """What the finalizer needs: kept apart from the server so it can be collected."""

    root: Path | None = None
    proc: subprocess.Popen[bytes] | None = None
    keep: bool = False
    owner: dict[str, Any] = field(default_factory=dict)  # Popen's user/group when root


def _finish(state: _State) -> None:
    if state.proc is not None:
        _shut_down(state.proc, "fast")
        state.proc = None
    if state.root is not None and not state.keep:
        shutil.rmtree(state.root, ignore_errors=True)
        state.root = None


class PostgresServer:
    """One private PostgreSQL cluster on 127.0.0.1 with one database and its owner role.

    `url` is what the application connects with; `superuser_url` what a test needs for
    superuser work over TCP; `sql()` runs statements as the superuser through the socket
    without any Python driver. `keep=True` leaves the folder (data, `postgres.log`) after
    `stop()`, to look at a failure.
    """

    host = "127.0.0.1"

    def __init__(
        self,
        *,
        user: str = "engage",
        database: str = "engage",
        password: str | None = None,
        bin_dir: Path | None = None,
        run_as: str = "nobody",
        settings: Mapping[str, str] | None = None,
        keep: bool = False,
    ) -> None:
        for name in (user, database):
            if not _NAME.match(name) or name == _SUPERUSER:
                raise ValueError(f"not a plain lower-case SQL name, or reserved: {name!r}")
        found = bin_dir or find_bin_dir()
        if found is None or not all((found / tool).is_file() for tool in _TOOLS):
            where = found or "/usr/lib/postgresql/*/bin"
            raise PostgresError(
                f"PostgreSQL not found ({', '.join(_TOOLS)} in {where} or ${BIN_ENV}):"
                " install Debian's postgresql package (scripts/dev test does)"
            )
        self.bin_dir = found
        self.user, self.database = user, database
        self.password = password or secrets.token_urlsafe(18)
        self.superuser_password = secrets.token_urlsafe(18)
        self.port = free_port()
        self._run_as = run_as
        self._settings = {**SETTINGS, **(settings or {})}
        self._state = _State(keep=keep)
        self._finalizer = weakref.finalize(self, _finish, self._state)

    # -- addresses ---------------------------------------------------------------------

    @property
    def url(self) -> str:
        """libpq URL of the application's role and database, over TCP with its password."""
        return self.url_for(self.database)

    @property
    def superuser_url(self) -> str:
        """The superuser's URL for the application's database, over TCP with its password."""
        password = quote(self.superuser_password, safe="")
        return f"postgresql://{_SUPERUSER}:{password}@{self.host}:{self.port}/{self.database}"

    def url_for(self, database: str) -> str:
        """The application role's URL for another database (see create_database)."""
        password = quote(self.password, safe="")
        return f"postgresql://{self.user}:{password}@{self.host}:{self.port}/{database}"

    @property
    def root(self) -> Path:
        """The folder: data/, postgres.log, and the unix socket (.s.PGSQL.PORT)."""
        if self._state.root is None:
            raise PostgresError("the server has not been started, or was stopped")
        return self._state.root

    @property
    def socket_dir(self) -> Path:
        return self.root

    @property
    def log_file(self) -> Path:
        return self.root / "postgres.log"

    @property
    def pid(self) -> int:
        """The postmaster's pid."""
        if self._state.proc is None:
            raise PostgresError("the server is not running")
        return self._state.proc.pid

    @property
    def running(self) -> bool:
        return self._state.proc is not None and self._state.proc.poll() is None

    def processes(self) -> set[int]:
        """The postmaster's pid and its children's (backends, checkpointer, ...) right now."""
        return {self.pid, *processes.children(self.pid)} if self.running else set()

    # -- life cycle --------------------------------------------------------------------

    def start(self) -> Self:
        """initdb on the first call, then start and wait until it accepts connections."""
        if self.running:
            return self
        fresh = self._state.root is None
        if fresh:
            self._init_cluster()
        self._launch()
        if fresh:
            password = self.password.replace("'", "''")
            self.sql(f"CREATE ROLE {self.user} LOGIN PASSWORD '{password}'")
            self.sql(f"CREATE DATABASE {self.database} OWNER {self.user}")
        return self

    def restart(self, mode: Literal["fast", "immediate"] = "fast") -> None:
        """Stop and start again on the same port with the same data.

        `immediate` stops without a checkpoint, as a crash would: the start then replays WAL.
        Clients lose their connections either way.
        """
        if self._state.proc is not None:
            _shut_down(self._state.proc, mode)
            self._state.proc = None
        self._launch()

    def stop(self) -> None:
        """Stop the server (no process is left) and remove its folder unless `keep`."""
        _finish(self._state)

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- superuser work ----------------------------------------------------------------

    def sql(self, *statements: str, database: str | None = None) -> str:
        """Run each statement (its own transaction) as the superuser; psql's unaligned output."""
        command = [str(self.bin_dir / "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"]
        command += ["-h", str(self.socket_dir), "-p", str(self.port), "-U", _SUPERUSER]
        command += ["-d", database or "postgres"]
        for statement in statements:
            command += ["-c", statement]
        done = subprocess.run(command, capture_output=True, text=True, env=_env(), check=False)
        if done.returncode != 0:
            raise PostgresError(f"psql failed ({done.returncode}): {done.stderr.strip()}")
        return done.stdout

    def create_database(self, name: str) -> str:
        """A new empty database owned by the application role; returns its URL."""
        if not _NAME.match(name):
            raise ValueError(f"not a plain lower-case SQL name: {name!r}")
        self.sql(f"CREATE DATABASE {name} OWNER {self.user}")
        return self.url_for(name)

    # -- internals ---------------------------------------------------------------------

    def _init_cluster(self) -> None:
        root = Path(tempfile.mkdtemp(prefix="devkit-pg-"))
        self._state.root = root
        if os.geteuid() == 0:
            account = pwd.getpwnam(self._run_as)
            os.chown(root, account.pw_uid, account.pw_gid)
            self._state.owner = {"user": account.pw_uid, "group": account.pw_gid}
            self._state.owner["extra_groups"] = []
        password_file = root / "superuser-password"
        password_file.write_text(self.superuser_password + "\n")
        if self._state.owner:
            os.chown(password_file, self._state.owner["user"], self._state.owner["group"])
        command = [str(self.bin_dir / "initdb"), "-D", str(root / "data"), "-U", _SUPERUSER]
        command += [f"--pwfile={password_file}", "--auth-local=trust"]
        command += ["--auth-host=scram-sha-256", "-E", "UTF8", "--no-locale", "--no-sync"]
        done = subprocess.run(command, capture_output=True, text=True, env=_env(),
                              umask=0o077, check=False, **self._state.owner)  # fmt: skip
        password_file.unlink()
        if done.returncode != 0:
            raise PostgresError(
                f"initdb failed ({done.returncode}) in {root}:\n{done.stdout}{done.stderr}"
            )
        lines = [f"{name} = {_quoted(value)}" for name, value in self._own_settings()]
        with (root / "data" / "postgresql.conf").open("a") as conf:
            conf.write("\n# devkit.postgres\n" + "\n".join(lines) + "\n")

    def _own_settings(self) -> list[tuple[str, str]]:
        place = {
            "port": str(self.port),
            "listen_addresses": self.host,
            "unix_socket_directories": str(self.root),
        }
        return [*self._settings.items(), *place.items()]

    def _launch(self) -> None:
        data = self.root / "data"
        with self.log_file.open("ab") as log:
            proc = subprocess.Popen(
                [str(self.bin_dir / "postgres"), "-D", str(data)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, env=_env(), umask=0o077, **self._state.owner,
            )  # fmt: skip
        self._state.proc = proc
        deadline = time.monotonic() + _START_SECONDS
        while _pid_file_status(data, proc.pid) != "ready":
            if proc.poll() is not None or time.monotonic() > deadline:
                _shut_down(proc, "immediate")
                self._state.proc = None
                raise PostgresError(f"postgres did not start ({proc.returncode}):\n{self._tail()}")
            time.sleep(0.05)

    def _tail(self, lines: int = 30) -> str:
        with suppress(OSError):
            return "".join(self.log_file.read_text(errors="replace").splitlines(True)[-lines:])
        return ""


def _pid_file_status(data: Path, pid: int) -> str:
    """The postmaster's own status line in postmaster.pid ("starting", "ready", ...)."""
    try:
        lines = (data / "postmaster.pid").read_text().splitlines()
    except OSError:
        return ""
    if len(lines) < 8 or lines[0].strip() != str(pid):
        return ""
    return lines[7].strip()


def _quoted(value: str) -> str:
    """A postgresql.conf string: any value may be quoted, numbers and units included."""
    return "'" + value.replace("'", "''") + "'"


def _env() -> dict[str, str]:
    """The environment without PG* variables (a PGDATA or PGPORT must not redirect us)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = "C"
    return env
