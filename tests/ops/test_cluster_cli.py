"""`engage-listener cluster [--json]` on an embedded store: the one (solo) daemon, as its
heartbeats show it (the PostgreSQL view is tested with the coordinator, in tests/service)."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from types import SimpleNamespace

from engage_listener.observe.status import write_heartbeats
from engage_listener.store.sqlite.store import SqliteStore
from tests.support.config_xml import minimal_listener, write_config
from tests.support.daemon import cli as engage_listener


async def test_cluster_lists_the_solo_daemon_and_what_it_runs(tmp_path: Path) -> None:
    config = write_config(tmp_path / "el.xml", minimal_listener(id_="A"), minimal_listener(id_="B"))
    empty = engage_listener("cluster", "--json", "--config", str(config))
    assert empty.returncode == 0, empty.stderr
    assert json.loads(empty.stdout)["daemons"] == []  # nothing has run yet
    store = SqliteStore(tmp_path / "store.sqlite3")
    await store.open()
    try:  # this test's process plays the daemon running A
        await write_heartbeats(store, {"A": SimpleNamespace(state="idle")})
    finally:
        await store.close()

    done = engage_listener("cluster", "--json", "--config", str(config))
    assert done.returncode == 0, done.stderr
    view = json.loads(done.stdout)
    assert (view["coordinator"], view["lease_seconds"], view["leases"]) == ("solo", 30, [])
    (daemon,) = view["daemons"]
    host = socket.gethostname()
    assert (daemon["host"], daemon["pid"], daemon["alive"]) == (host, os.getpid(), True)
    assert daemon["listeners"] == ["A"] and daemon["heartbeat_at"]

    text = engage_listener("cluster", "--config", str(config))
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert lines[0] == "coordinator: solo (LeaseSeconds 30)"
    assert lines[1].split() == ["HOST", "PID", "STATE", "STARTED", "LAST", "HEARTBEAT", "LISTENERS"]
    assert lines[2].split()[:4] == [host, str(os.getpid()), "alive", "-"]
    assert lines[2].split()[-1] == "A"
