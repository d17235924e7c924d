"""The daemon keeps one malloc arena, not one per thread (memory.one_malloc_arena)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

PROGRAM = """
import ctypes, sys, threading
from engage_listener.service.memory import one_malloc_arena
applied = one_malloc_arena() if sys.argv[1] == "one" else False
kept = []
def work():  # many small allocations, as parsing and the store's threads make
    kept.append([str(i) * 3 for i in range(50000)])
threads = [threading.Thread(target=work) for _ in range(4)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(applied, flush=True)
ctypes.CDLL(None).malloc_stats()  # one "Arena N:" block per arena, on stderr
"""


def arenas(mode: str, env: dict[str, str] | None = None) -> tuple[str, int]:
    done = subprocess.run(
        [sys.executable, "-c", PROGRAM, mode],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env={k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"} | (env or {}),
    )
    return done.stdout.strip(), done.stderr.count("Arena ")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc only")
def test_threads_share_one_arena() -> None:
    assert arenas("default")[1] > 1  # what glibc does by itself: an arena per thread
    assert arenas("one") == ("True", 1)


def test_an_operators_setting_is_left_alone() -> None:
    assert arenas("one", {"MALLOC_ARENA_MAX": "4"})[0] == "False"
