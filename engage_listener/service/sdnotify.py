"""The systemd notify protocol (sd_notify) in a few lines of socket code.

With ``Type=notify`` systemd considers the service started only once it says
READY=1, so dependent units wait for a listener that really runs; the watchdog
restarts a daemon that hangs; STATUS= shows in ``systemctl status``. Writing the
datagrams ourselves avoids a dependency on libsystemd. Sending is best effort:
a notification that cannot be delivered must never take the daemon down.

With ``Type=notify-reload`` (systemd 253+) send `reloading` when a reload
starts and `ready` again once it is done.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping


def _address(value: str) -> str | None:
    """NOTIFY_SOCKET as a socket address: a path, or an abstract name after "@"."""
    if value.startswith("@") and len(value) > 1:
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    return None  # unset, or a transport we do not speak (vsock:)


def _watchdog_interval(environ: Mapping[str, str]) -> float | None:
    """Half the watchdog timeout, the interval systemd recommends, if the watchdog is ours."""
    pid = environ.get("WATCHDOG_PID")
    if pid is not None and pid.strip() != str(os.getpid()):
        return None  # meant for another process (we were forked or exec'd by it)
    try:
        usec = int(environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    return usec / 2 / 1e6 if usec > 0 else None


class Notifier:
    """Talks to the service manager when NOTIFY_SOCKET is set; does nothing otherwise."""

    def __init__(self, environ: Mapping[str, str] = os.environ) -> None:
        self._address = _address(environ.get("NOTIFY_SOCKET", ""))
        self.enabled: bool = self._address is not None
        self.watchdog_interval: float | None = _watchdog_interval(environ) if self.enabled else None

    def ready(self, status: str | None = None) -> None:
        """Startup (or a reload) is complete."""
        fields = ["READY=1"]
        if status is not None:
            fields.append(_status_field(status))
        self.send(*fields)

    def status(self, text: str) -> None:
        """One line for ``systemctl status``."""
        self.send(_status_field(text))

    def watchdog(self) -> None:
        """Still alive; send every `watchdog_interval` seconds."""
        self.send("WATCHDOG=1")

    def reloading(self) -> None:
        """A reload starts; Type=notify-reload needs the monotonic timestamp with it."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.send("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def stopping(self) -> None:
        """Shutdown has begun."""
        self.send("STOPPING=1")

    def send(self, *fields: str) -> bool:
        """Send one message of KEY=VALUE fields; False (never an exception) if it did not go."""
        if self._address is None or not fields:
            return False
        data = "\n".join(fields).encode("utf-8", errors="replace")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                # Never block the event loop, even if systemd is not reading.
                sock.sendto(data, socket.MSG_DONTWAIT, self._address)
        except OSError:
            return False
        return True


def _status_field(text: str) -> str:
    return "STATUS=" + " ".join(text.splitlines())
