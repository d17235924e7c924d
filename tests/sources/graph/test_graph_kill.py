"""kill -9 of a daemon reading Graph, at random points of its batch, then `run --once`:
nothing lost, nothing twice (the IMAP fault test of tests/e2e/test_faults.py, on Graph).

The daemon runs as operators run it (a subprocess with a configuration file), signs in at
the identity-provider imitation with app-only client credentials, and reads the Graph
imitation, which runs in this process.
"""

from __future__ import annotations

import collections
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from engage_listener.config.secret_refs import generate_key
from tests.support.config_xml import WITH_GRAPH, graph_xml, write_config
from tests.support.faults import count_rows, mails, message_id
from tests.support.helpers import db_rows
from tests.support.servers.graph_server import GraphServer
from tests.support.servers.oauth_server import OAuthTestServer

BOX = "support@contoso.test"
NEW, DONE = "Inbox/New", "Inbox/Done"
TRIALS = 6
PER_TRIAL = 100
SECRET = "graph-kill-secret"


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[tuple[GraphServer, OAuthTestServer]]:
    with OAuthTestServer(tmp_path / "idp") as idp, GraphServer(tmp_path / "graph", idp) as graph:
        idp.add_ms_app("tenant-a", "app-graph", secret=SECRET, mailbox=BOX)
        graph.add_mailbox(BOX)
        yield graph, idp


def configure(directory: Path, graph: GraphServer, idp: OAuthTestServer) -> Path:
    directory.mkdir(parents=True)
    generate_key(directory / "el.key")
    auth = {"Type": "Microsoft", "TenantId": "tenant-a", "ClientId": "app-graph",
            "ClientSecret": f"plain:{SECRET}", "Authority": idp.authority,
            "CaFile": str(idp.ca_file)}  # fmt: skip
    xml = graph_xml(graph.endpoint, graph.ca_file, BOX, auth=auth, PollSeconds="5")
    return write_config(
        directory / "el.xml", xml, process=WITH_GRAPH, key_file=directory / "el.key"
    )


def environment(directory: Path) -> dict[str, str]:
    return {**os.environ, "STATE_DIRECTORY": str(directory / "state"), "PYTHONUNBUFFERED": "1"}


def batch_started(log: Path) -> bool:
    return log.exists() and b'"batch_start"' in log.read_bytes()


def wait(check: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


def trial(graph: GraphServer, base: Path, number: int, delay: float) -> str:
    """Seed, start the daemon, kill -9 it `delay` s into its first batch, then run --once."""
    directory = base / f"trial{number}"
    config = configure(directory, graph, graph.idp)  # type: ignore[arg-type]
    tag = f"g{number}"
    sent = mails(PER_TRIAL, tag)
    for raw in sent:
        graph.append(BOX, NEW, raw)
    db, log = directory / "store.sqlite3", directory / "daemon.log"
    command = [sys.executable, "-m", "engage_listener", "run", "--config", str(config)]
    with log.open("ab") as out:
        daemon = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT,
                                  env=environment(directory))  # fmt: skip
    try:
        wait(lambda: batch_started(log), 60, "batch_start")
        time.sleep(delay)
    finally:
        daemon.send_signal(signal.SIGKILL)
        daemon.wait(10)
    cases, moved = count_rows(db, "cases"), len(graph.messages(BOX, DONE))
    phase = ("before the first commit" if cases == 0 else "mid-batch" if cases < PER_TRIAL
             else "while moving" if moved < PER_TRIAL else "after the batch")  # fmt: skip
    once = subprocess.run([*command[:4], "--once", *command[4:]], capture_output=True, text=True,
                          timeout=120, env=environment(directory), check=False)  # fmt: skip
    assert once.returncode == 0, once.stdout[-3000:] + once.stderr[-3000:]
    expected = sorted(message_id(raw) for raw in sent)
    assert graph.messages(BOX, NEW) == [], phase
    assert sorted(message_id(m.mime) for m in graph.messages(BOX, DONE)) == expected, phase
    assert db_rows(db, "SELECT count(*), count(DISTINCT message_id) FROM messages") == [
        (PER_TRIAL, PER_TRIAL)
    ], phase
    assert db_rows(db, "SELECT count(*) FROM cases") == [(PER_TRIAL,)], phase
    assert db_rows(db, "SELECT count(DISTINCT state), min(state) FROM ledger") == [(1, "moved")]
    for message in graph.messages(BOX, DONE):  # this trial's mail leaves for the next one
        graph.move(BOX, message.immutable_id, "deleteditems")
    return phase


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_kill_9_at_random_points_loses_and_duplicates_nothing(
    tmp_path: Path, servers: tuple[GraphServer, OAuthTestServer]
) -> None:
    graph, _idp = servers
    graph.create_folder(BOX, NEW)
    graph.create_folder(BOX, DONE)
    rng = random.Random(1717)
    phases = collections.Counter(
        trial(graph, tmp_path, number, rng.uniform(0.0, 0.5)) for number in range(TRIALS)
    )
    assert TRIALS - phases["after the batch"] >= TRIALS // 2, phases
