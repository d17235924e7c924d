"""The processes a devkit server started, read from /proc: finding them, and waiting for them.

Decisions: a process is known by its pid and its start time together, so a pid that the
kernel hands to an unrelated process meanwhile is never mistaken for a server's (and never
signalled).
"""

from __future__ import annotations

import time
from pathlib import Path

__all__ = ["alive", "children", "wait_gone"]


def _stat(pid: int | str) -> list[str]:
    """/proc/PID/stat from field 3 (state) on: [0] state, [1] parent, [19] start time."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return []


def children(parent: int) -> dict[int, str]:
    """The children of `parent` (a postmaster's backends), each with its start time."""
    found = {}
    for entry in Path("/proc").glob("[0-9]*"):
        fields = _stat(entry.name)
        if len(fields) > 19 and fields[1] == str(parent):
            found[int(entry.name)] = fields[19]
    return found


def alive(pid: int, started: str) -> bool:
    """True while that process runs: not a zombie, and not a new process with its pid."""
    fields = _stat(pid)
    return len(fields) > 19 and fields[19] == started and fields[0] not in ("Z", "X")


def wait_gone(processes: dict[int, str], seconds: float) -> dict[int, str]:
    """Wait up to `seconds` for these processes to end; those still running."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not (processes := {p: s for p, s in processes.items() if alive(p, s)}):
            break
        time.sleep(0.05)
    return processes
