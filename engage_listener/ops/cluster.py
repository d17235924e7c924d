"""`engage-listener cluster [--json]`: the daemons sharing the listeners, and the leases.

The figures come from `service.cluster` (the lease tables through named methods, or the
heartbeats of a solo daemon); this module only lays them out.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from engage_listener.service.cluster import ClusterView


def as_json(view: ClusterView) -> dict[str, Any]:
    return asdict(view)


def _table(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
    ]


def render_cluster(view: ClusterView) -> str:
    """The daemons (host, pid, started, last heartbeat, listeners owned), then the leases."""
    lines = [f"coordinator: {view.coordinator} (LeaseSeconds {view.lease_seconds})"]
    daemons: list[tuple[str, ...]] = [
        ("HOST", "PID", "STATE", "STARTED", "LAST HEARTBEAT", "LISTENERS")
    ]
    for d in view.daemons:
        state = "stopped" if d.stopped_at else "alive" if d.alive else "down"
        daemons.append(
            (
                d.host, str(d.pid), state, d.started_at or "-", d.heartbeat_at or "-",
                ", ".join(d.listeners) or "-",
            )
        )  # fmt: skip
    lines += _table(daemons) if view.daemons else ["no daemon has run yet"]
    if view.leases:
        leases: list[tuple[str, ...]] = [("LISTENER", "OWNER", "FENCE", "EXPIRES")]
        for lease in view.leases:
            owner = f"{lease.host}:{lease.pid}" if lease.held else "(none)"
            leases.append((lease.listener, owner, str(lease.fence), lease.expires_at or "-"))
        lines += ["", *_table(leases)]
    return "\n".join(lines) + "\n"
