"""Which listeners this daemon runs: the coordinator family (issue 16, points 3 and 5).

The supervisor asks a `Coordinator` which of the enabled listeners are this daemon's and
is told, through one callback, whenever that changes. Two implementations, picked by name
in `build_coordinator` (the one place):

* "solo" - one daemon owns every enabled listener; no database (the SQLite store, as
  before this family existed);
* "postgres" - several daemons share the listeners through lease rows in PostgreSQL
  (`coordinator_pg`); each listener is run by exactly one daemon at a time.

Decisions:
- The callback receives the whole owned set, not deltas: a supervisor that missed nothing
  and one that did converge the same way, and a loss is applied by the same code as a gain.
- Spread: `spread()` gives every listener to one live daemon by rendezvous hashing (each
  listener ranks the daemons by a hash of both ids), bounded so that no daemon gets more than
  ceil(L/D). Every daemon computes the same answer from the same live set, so they agree
  without talking, and a daemon joining or leaving moves few listeners.
- The daemon id is host, pid and a random suffix: a restarted daemon that reuses a pid (in
  a container, pid 1) is still a new owner, so the store's fencing cannot confuse the two.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib
import math
import os
import secrets
import socket
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from typing import Any, Protocol

from engage_listener.config.model import StoreConfig
from engage_listener.observe.status import ListenerOwner

OnChange = Callable[[frozenset[str]], Awaitable[None]]

# name -> (module, class); imported when chosen, so "solo" never loads psycopg.
IMPLEMENTATIONS: dict[str, tuple[str, str]] = {
    "solo": ("engage_listener.service.coordinator", "SoloCoordinator"),
    "postgres": ("engage_listener.service.coordinator_pg", "PostgresCoordinator"),
}


@dataclass(frozen=True)
class DaemonIdentity:
    """Who this daemon is: `id` is what the lease rows and the store's fencing name."""

    id: str
    host: str
    pid: int

    @classmethod
    def create(cls) -> DaemonIdentity:
        host, pid = socket.gethostname(), os.getpid()
        return cls(f"{host}:{pid}:{secrets.token_hex(4)}", host, pid)

    @property
    def owner(self) -> ListenerOwner:
        return ListenerOwner(self.host, self.pid)


class Coordinator(Protocol):
    """Decides which listeners this daemon runs.

    `open(listeners)` once before anything runs; `owned()` is the set to run right now;
    `run(changed, stop)` keeps the ownership (heartbeats, renewals, take-overs) and awaits
    `changed(owned)` with the new whole set at every change, until `stop` is set. A
    listener missing from the set must be stopped before `changed` returns: the lease of a
    surplus listener is given up only afterwards. `set_listeners` follows reloads; `close`
    gives every lease up (call it after the listeners stopped).
    """

    identity: DaemonIdentity

    @property
    def store_owner(self) -> str | None:
        """What the store passes to its fencing check (`owner`); None: no fencing (solo)."""
        ...

    def owned(self) -> frozenset[str]: ...

    async def open(self, listeners: Collection[str]) -> None: ...

    def set_listeners(self, listeners: Collection[str]) -> None: ...

    async def run(self, changed: OnChange, stop: asyncio.Event) -> None: ...

    async def close(self) -> None: ...

    async def take_all(self) -> frozenset[str]:
        """`run --once`: every listener given to `open`, for one pass; returns those another
        live daemon holds (then nothing is taken: the pass is refused)."""
        ...

    async def keep(self, stop: asyncio.Event) -> None:
        """`run --once`: keep what `take_all` took until `stop` is set."""
        ...


class SoloCoordinator:
    """The one daemon of an embedded (SQLite) store owns every enabled listener."""

    def __init__(self, store: StoreConfig | None = None, **_: Any) -> None:
        self.identity = DaemonIdentity.create()
        self._owned: frozenset[str] = frozenset()

    @property
    def store_owner(self) -> str | None:
        return None

    def owned(self) -> frozenset[str]:
        return self._owned

    async def open(self, listeners: Collection[str]) -> None:
        self._owned = frozenset(listeners)

    def set_listeners(self, listeners: Collection[str]) -> None:
        self._owned = frozenset(listeners)  # the supervisor applies a reload itself

    async def run(self, changed: OnChange, stop: asyncio.Event) -> None:
        await stop.wait()

    async def close(self) -> None:
        self._owned = frozenset()

    async def take_all(self) -> frozenset[str]:
        return frozenset()

    async def keep(self, stop: asyncio.Event) -> None:
        await stop.wait()


def coordinator_kind(store: StoreConfig) -> str:
    """ "postgres" when the store is PostgreSQL (several daemons may share it), else "solo"."""
    return "postgres" if store.kind == "postgres" else "solo"


def build_coordinator(store: StoreConfig, kind: str | None = None, **options: Any) -> Coordinator:
    """The coordinator for this store (not yet opened); `kind` overrides the choice."""
    module, name = IMPLEMENTATIONS[kind or coordinator_kind(store)]
    coordinator: Coordinator = getattr(importlib.import_module(module), name)(store, **options)
    return coordinator


def _score(listener: str, daemon: str) -> bytes:
    return hashlib.blake2b(f"{listener}\0{daemon}".encode(), digest_size=8).digest()


def spread(listeners: Collection[str], daemons: Collection[str]) -> dict[str, str]:
    """Listener -> daemon: rendezvous hashing, ceil(L/D) or floor(L/D) listeners a daemon.

    Listeners are placed in name order, each with the highest-ranked daemon that still has
    room; the same inputs give the same answer in every daemon.
    """
    if not daemons:
        return {}
    ids, names = sorted(set(daemons)), sorted(set(listeners))
    cap = math.ceil(len(names) / len(ids))
    extra = len(names) % len(ids) or len(ids)  # how many daemons may reach `cap`
    load = dict.fromkeys(ids, 0)
    result: dict[str, str] = {}
    for lid in names:
        full = sum(1 for n in load.values() if n == cap)
        for daemon in sorted(ids, key=lambda d: _score(lid, d), reverse=True):
            if load[daemon] < cap - 1 or (load[daemon] == cap - 1 and full < extra):
                result[lid] = daemon
                load[daemon] += 1
                break
    return result
