"""The Graph part of bench/ingest.py (`--source graph`): the same corpus through a Graph
listener against the Graph imitation, `run --once`, msgs/s and peak RSS.

The imitation (tests/support/servers/graph_server.py) and the identity-provider imitation
run in this process, in threads, over HTTPS on loopback; the daemon signs in with app-only
client credentials and reads the mailbox as it would read Microsoft 365. The imitation's
own cost (a Python HTTP server, JSON, a lock) is part of the wall time: the figure says how
the listener behaves against Graph's protocol, not how fast Microsoft's service answers.
"""

# ruff: noqa: PLC0415  (the imitations load only when a Graph run is asked for)
from __future__ import annotations

import os
import sqlite3
import sys
from collections.abc import Callable, Sequence
from contextlib import suppress
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

MAILBOX = "bench@contoso.test"
NEW, DONE = "Inbox/New", "Inbox/Done"
SECRET = "bench-graph-secret"


def graph_run(
    work: Path,
    messages: Sequence[bytes],
    timeout: float,
    measure: Callable[..., Any],
) -> tuple[Any, int, int, str]:
    """Seed a fresh imitation with `messages`, run the daemon once through `measure`
    (bench/ingest.py's run_measured); returns (measured, moved, left, note)."""
    from engage_listener.config.secret_refs import generate_key
    from tests.support.config_xml import WITH_GRAPH, graph_xml, write_config
    from tests.support.servers.graph_server import GraphServer
    from tests.support.servers.oauth_server import OAuthTestServer

    work.mkdir(parents=True, exist_ok=True)
    with OAuthTestServer(work / "idp") as idp, GraphServer(work / "graph", idp) as graph:
        idp.add_ms_app("tenant-a", "app-bench", secret=SECRET, mailbox=MAILBOX)
        graph.add_mailbox(MAILBOX)
        graph.create_folder(MAILBOX, DONE)
        graph.create_folder(MAILBOX, NEW)
        for raw in messages:
            graph.append(MAILBOX, NEW, raw)
        generate_key(work / "el.key")
        auth = {"Type": "Microsoft", "TenantId": "tenant-a", "ClientId": "app-bench",
                "ClientSecret": f"plain:{SECRET}", "Authority": idp.authority,
                "CaFile": str(idp.ca_file)}  # fmt: skip
        xml = graph_xml(graph.endpoint, graph.ca_file, MAILBOX, "GraphBench", auth=auth,
                        ExtractAttachments="True")  # fmt: skip
        config = write_config(work / "el.xml", xml, process=WITH_GRAPH, store="store.sqlite3",
                              key_file=work / "el.key")  # fmt: skip
        os.environ["STATE_DIRECTORY"] = str(work / "state")  # the daemon's token cache
        cmd = [sys.executable, "-m", "engage_listener", "run", "--once", "--config", str(config)]
        measured = measure(cmd, cwd=work, stdout=work / "daemon.log",
                           stderr=work / "stderr.txt", timeout=timeout)  # fmt: skip
        moved, left = len(graph.messages(MAILBOX, DONE)), len(graph.messages(MAILBOX, NEW))
        peak = graph.peak(MAILBOX)
    note = f"peak {peak} requests in flight; "
    with suppress(sqlite3.Error):
        db = sqlite3.connect(f"file:{work / 'store.sqlite3'}?mode=ro", uri=True)
        (cases,) = db.execute("SELECT count(*) FROM cases").fetchone()
        db.close()
        note += f"{cases} cases; "
    return measured, moved, left, note
