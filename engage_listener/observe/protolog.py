"""Protocol log files: every line exchanged with a mail server, secrets masked.

The original service wrote the password into this file in clear; here LOGIN and
AUTHENTICATE arguments are always replaced by *** before anything is written, and
message literals are recorded as a size marker rather than their content.

`log_file_problem` is the start-up check of a ProtocolLogFile; a log that still
cannot be opened when a connection starts is a ProtocolLogError (permanent: it
needs an operator), never a bare OSError with a traceback.

Decisions: with %time% (or %date%) in the name every connection, and every
acknowledgement's SMTP session, starts a new file that size rotation never sees, so
`open_log` also prunes: files of the same pattern (%date% and %time% as wildcards,
%listener% as this log's own name, rotated `.N` copies included) last written more than
ProtocolLogKeepDays ago are deleted. Pruning lists a directory on the event loop, so it
runs at the first open and then at most once per PRUNE_INTERVAL for each pattern.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

from engage_listener.errors import PermanentError
from engage_listener.observe.logs import scrub

_LOGIN = re.compile(r"^(\S+ LOGIN) .*$", re.IGNORECASE)
_AUTH = re.compile(r"^(\S+ AUTHENTICATE \S+|AUTH \S+)(?: .*)?$", re.IGNORECASE)
_AUTH_NO_IR = re.compile(r"^(\S+ AUTHENTICATE \S+|AUTH \S+)$", re.IGNORECASE)
_PASS = re.compile(r"^(PASS) .*$", re.IGNORECASE)


_PLACEHOLDER = re.compile(r"(%date%|%time%|%listener%)")
PRUNE_INTERVAL = 3600.0  # seconds between two prunings of one pattern
_pruned_at: dict[tuple[str, str], float] = {}


def _safe(listener: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", listener)


def expand_path(pattern: str, listener: str, now: dt.datetime | None = None) -> Path:
    """Expand %date%, %time% and %listener% in a ProtocolLogFile value."""
    moment = now or dt.datetime.now()
    safe_listener = _safe(listener)
    return Path(
        pattern.replace("%date%", moment.strftime("%Y%m%d"))
        .replace("%time%", moment.strftime("%H%M%S"))
        .replace("%listener%", safe_listener)
    )


def mask_command(line: str) -> str:
    """Hide credentials in a client command line."""
    match = _LOGIN.match(line)
    if match:
        return f"{match.group(1)} ***"
    match = _AUTH.match(line) or _PASS.match(line)
    if match:
        return f"{match.group(1)} ***"
    return line


MAX_BYTES = 10 * 1024 * 1024
KEEP = 5


class ProtocolLogError(PermanentError):
    """The protocol log file cannot be opened for writing."""


def log_file_problem(path: Path) -> str | None:
    """Why a protocol log could not be written at `path`, or None; creates nothing.

    The directory must exist and be writable (rotation renames files in it); an
    existing file must open for appending, which also refuses a directory of that
    name, even for root, whom file modes do not stop.
    """
    directory = path.parent
    if not directory.is_dir():
        return f"directory {directory} does not exist"
    if not os.access(directory, os.W_OK | os.X_OK):
        return f"directory {directory} is not writable"
    if path.is_dir():
        return f"{path} is a directory, not a file"
    if path.exists():
        try:
            # O_NONBLOCK: a FIFO nobody reads is refused at once instead of hanging.
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_NONBLOCK)
        except OSError as exc:
            return f"{path} cannot be opened for writing: {exc.strerror or exc}"
        os.close(fd)
    return None


def _open(path: Path) -> TextIO:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    except OSError as exc:
        raise ProtocolLogError(
            f"ProtocolLogFile {path} cannot be opened for writing: {exc.strerror or exc}"
        ) from exc
    return os.fdopen(fd, "a", encoding="utf-8", errors="replace")


class ProtocolLog:
    """Append-only protocol log for one connection, rotated by size.

    Writes go to Python's buffer and are flushed once per chunk received from the
    server, so logging adds no system call per line and never waits on the disk.
    """

    def __init__(
        self, path: Path, *, bodies: bool = False, max_bytes: int = MAX_BYTES, keep: int = KEEP
    ) -> None:
        self._file: TextIO = _open(path)
        self.path = path
        self.bodies = bodies
        self.max_bytes, self.keep = max_bytes, keep
        self._size = path.stat().st_size
        self._mask_next = False

    def _write(self, direction: str, text: str) -> None:
        if self._file.closed:  # the loop may report a closed connection after close()
            return
        stamp = dt.datetime.now().strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
        # The server's lines too: a hostile server may echo a password back at us.
        line = f"{stamp} {direction} {scrub(text)}\n"
        self._file.write(line)
        self._size += len(line)
        if self._size >= self.max_bytes:
            self._rotate()

    def _rotate(self) -> None:
        """path -> path.1 -> ... -> path.KEEP (the oldest is dropped), then a new path."""
        self._file.close()
        for n in range(self.keep - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{n}")
            if older.exists():
                older.replace(self.path.with_name(f"{self.path.name}.{n + 1}"))
        if self.keep > 0:
            self.path.replace(self.path.with_name(f"{self.path.name}.1"))
        else:
            self.path.unlink()
        self._file, self._size = _open(self.path), 0

    def sent(self, line: str) -> None:
        """Record a line sent by us, credentials masked."""
        if self._mask_next:
            self._mask_next = False
            self._write("C:", "***")
            return
        # "AUTHENTICATE MECH" with no initial response: the next line is the payload.
        self._mask_next = bool(_AUTH_NO_IR.match(line))
        self._write("C:", mask_command(line))

    def received(self, line: bytes) -> None:
        """Record a line received from the server."""
        self._write("S:", line.decode("utf-8", "replace"))

    def literal(self, size: int) -> None:
        """Record that a literal of `size` bytes was received, without its content."""
        self._write("S:", f"<{size} bytes of literal data>")

    def literal_data(self, data: bytes) -> None:
        """The literal's content itself, only with ProtocolLogBodies True."""
        if self.bodies:
            for line in data.decode("utf-8", "replace").splitlines():
                self._write("S|", line)

    def note(self, text: str) -> None:
        """Record a local event (connect, TLS, close)."""
        self._write("--", text)

    def flush(self) -> None:
        if not self._file.closed:
            self._file.flush()

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()


# ----- pruning (see the module docstring) ------------------------------------------------
def _part_regex(part: str, listener: str, last: bool) -> re.Pattern[str]:
    """One path component of the pattern as a regex; the file name also matches `.N`."""
    wildcards = {"%date%": r"\d{8}", "%time%": r"\d{6}", "%listener%": re.escape(_safe(listener))}
    pieces = [wildcards.get(p, re.escape(p)) for p in _PLACEHOLDER.split(part)]
    return re.compile("".join(pieces) + (r"(?:\.\d+)?" if last else ""))


def pattern_files(pattern: str, listener: str) -> Iterator[Path]:
    """Existing files that `pattern` made (or rotated) for `listener`, at any date/time."""
    parts = Path(pattern).parts
    fixed = next((i for i, p in enumerate(parts) if "%" in p), len(parts) - 1)
    found = [Path(*parts[:fixed]) if fixed else Path()]
    for index in range(fixed, len(parts)):
        last = index == len(parts) - 1
        regex = _part_regex(parts[index], listener, last)
        found = [
            Path(entry.path)
            for directory in found
            for entry in _entries(directory)
            if regex.fullmatch(entry.name) and (entry.is_file(follow_symlinks=False) or (
                not last and entry.is_dir(follow_symlinks=False)))
        ]  # fmt: skip
    yield from found


def _entries(directory: Path) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(directory) as entries:
            return list(entries)
    except OSError:
        return []


def prune(pattern: str, listener: str, keep_days: int, now: float | None = None) -> list[Path]:
    """Delete the pattern's files last written more than `keep_days` days ago."""
    cutoff = (time.time() if now is None else now) - keep_days * 86400
    removed: list[Path] = []
    for path in pattern_files(pattern, listener):
        try:
            info = path.lstat()
            if stat.S_ISREG(info.st_mode) and info.st_mtime < cutoff:
                path.unlink()
                removed.append(path)
        except OSError:
            continue  # gone meanwhile, or not ours to delete: never a reason to fail
    return removed


def open_log(
    pattern: str,
    listener: str,
    *,
    keep_days: int,
    bodies: bool = False,
    max_bytes: int = MAX_BYTES,
    keep: int = KEEP,
) -> ProtocolLog:
    """A connection's protocol log: old files of the pattern pruned (see the module
    docstring), then the expanded path opened."""
    key, clock = (pattern, listener), time.monotonic()
    last = _pruned_at.get(key)
    if last is None or clock - last >= PRUNE_INTERVAL:
        _pruned_at[key] = clock
        prune(pattern, listener, keep_days)
    return ProtocolLog(
        expand_path(pattern, listener), bodies=bodies, max_bytes=max_bytes, keep=keep
    )
