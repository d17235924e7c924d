"""The daemon as operators run it: `python -m engage_listener` in a subprocess, its JSON log."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """One CLI command to its end, output captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "engage_listener", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def start_daemon(
    config: Path, log: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """`run --config` in the background, stdout and stderr appended to `log`; `env` adds
    environment variables (env: secrets)."""
    out = log.open("ab")
    return subprocess.Popen(
        [sys.executable, "-m", "engage_listener", "run", "--config", str(config)],
        stdout=out,
        stderr=subprocess.STDOUT,
        env={**os.environ, **env} if env else None,
    )


def events(log: Path) -> list[dict[str, object]]:
    """The JSON events of a daemon's log (other lines skipped)."""
    return [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]


def wait_for(check: Callable[[], object], timeout: float = 30.0, what: str = "") -> None:
    """Poll `check` (real time, blocking) until true; fail with `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)
