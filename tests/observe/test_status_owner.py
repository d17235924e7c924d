"""`owner` in the status: given by the leases when several daemons share the store, else
this host and the heartbeat's pid; a pid on another host is never looked up here."""

from __future__ import annotations

import socket
from pathlib import Path
from types import SimpleNamespace

from engage_listener.observe.status import ListenerOwner, read_status, write_heartbeats
from engage_listener.store.sqlite.store import SqliteStore

GONE = 2**22 + 12345  # above the default pid_max: no such process here


async def test_owner_from_leases_or_from_the_local_heartbeat(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "store.sqlite3")
    await store.open()
    try:
        await write_heartbeats(store, {"A": SimpleNamespace(state="idle")}, pid=GONE)
        here = socket.gethostname()

        # Solo: A's pid is gone on this host, so A is down and nobody owns it.
        (a,) = await read_status(store, ["A"])
        assert (a.alive, a.owner) == (False, None)

        # Leases: A is held by a daemon on another host, whose pid means nothing here.
        remote = ListenerOwner("db2.example.org", GONE)
        (a,) = await read_status(store, ["A"], owners={"A": remote})
        assert (a.alive, a.owner) == (True, remote)
        # The same pid said to be on this host is checked, and found gone.
        (a,) = await read_status(store, ["A"], owners={"A": ListenerOwner(here, GONE)})
        assert a.alive is False
        # No lease holder: nobody owns it.
        (a,) = await read_status(store, ["A"], owners={})
        assert a.owner is None
    finally:
        await store.close()
