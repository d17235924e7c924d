"""One thread that cancels inline hook statements still running at their deadline.

An inline routing hook (`hooks.run_inline`) runs its statements on the event loop with a
blocking wait, so the loop cannot stop one that runs too long: another thread must send
PostgreSQL's cancel request. That used to be a `threading.Timer` started for every mail,
a thread created, started and joined per mail on the loop (a quarter of the inline run's
time in the PostgreSQL profile, bench/README.md). Here one long-lived thread per process
is armed with a deadline and disarmed when the run ends.

Decisions:

* Arming costs a lock and, only when the new deadline is earlier than the one the thread
  sleeps for, a wake-up; disarming only a lock. With mails arriving steadily the thread
  wakes about once per deadline span (INLINE_LIMIT), finds the entries gone, sleeps again.
* The cancel is sent while holding the lock, and `disarm` takes it: once `disarm`
  returns, no cancel of that run is still on its way, so none can reach the connection's
  next statement (a `Timer` could fire after `cancel()` was called).
* libpq's cancel opens a connection of its own and waits for it; the loop is then blocked
  in the statement being cancelled anyway, so holding the lock meanwhile costs nothing.
* A daemon thread, started on the first arming: an idle process never has one, and a
  process that exits does not wait for it.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import Callable

__all__ = ["CANCELLER", "Canceller"]


class Canceller:
    """Calls each armed `cancel` once its deadline (time.monotonic()) has passed, unless
    it was disarmed before (see the module)."""

    def __init__(self, name: str = "pg-cancel") -> None:
        self._name = name
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._armed: dict[int, tuple[float, Callable[[], object]]] = {}
        self._serial = 0
        self._until = math.inf  # when the thread wakes next (inf: it sleeps until woken)
        self._thread: threading.Thread | None = None

    def arm(self, deadline: float, cancel: Callable[[], object]) -> int:
        """Have `cancel()` called at `deadline`; returns the token for `disarm`."""
        with self._lock:
            self._serial += 1
            self._armed[self._serial] = (deadline, cancel)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
            elif deadline < self._until:
                self._wake.notify()
            return self._serial

    def disarm(self, token: int) -> None:
        """Forget `token`'s cancel; waits for one being sent right now (see the module)."""
        with self._lock:
            self._armed.pop(token, None)

    @property
    def armed(self) -> int:
        """How many cancels are armed (for tests)."""
        with self._lock:
            return len(self._armed)

    def _run(self) -> None:
        with self._lock:
            while True:
                now = time.monotonic()
                for token, (deadline, cancel) in list(self._armed.items()):
                    if deadline <= now:
                        del self._armed[token]
                        with contextlib.suppress(Exception):  # the run sees its own error
                            cancel()
                self._until = min((d for d, _ in self._armed.values()), default=math.inf)
                self._wake.wait(None if self._until == math.inf else self._until - now)


CANCELLER = Canceller()  # the process's one (see the module)
