"""Every exception the package raises on purpose.

A leaf module: it imports nothing from the package, so any module may use it.
The split between transient and permanent errors drives the listener's retry
policy: transient ones back off and retry soon, permanent ones wait for an
operator's fix (retried slowly, or on reload).
"""

from __future__ import annotations

from dataclasses import dataclass


class EngageError(Exception):
    """Base of every error engage-listener raises on purpose."""


@dataclass(frozen=True)
class ConfigProblem:
    """One problem in a configuration file, with where it is."""

    file: str
    line: int
    element: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.element}: {self.message}"


class ConfigError(EngageError):
    """The configuration is unusable; carries every problem found, not just the first."""

    def __init__(self, problems: list[ConfigProblem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class TransientError(EngageError):
    """Likely to go away by itself (network, timeouts, a busy server): back off and retry."""


class PermanentError(EngageError):
    """Needs an operator (bad credentials, missing folder, untrusted certificate)."""


class AuthenticationError(PermanentError):
    """The server refused the login."""


class FolderMissingError(PermanentError):
    """A configured folder does not exist on the server."""


class TlsError(PermanentError):
    """The TLS handshake failed, typically because the certificate is not trusted."""


class ConnectionLostError(TransientError):
    """The connection dropped or a command timed out; the client must be rebuilt."""


class ProtocolError(TransientError):
    """The server answered something we could not use (NO/BAD where OK was needed)."""


class StoreError(TransientError):
    """The case store could not commit; nothing is moved on the server until it can."""


class QuarantineNow(EngageError):
    """This mail must be quarantined at once (e.g. unknown sender with policy Quarantine)."""


class HookError(EngageError):
    """The routing hook cannot be loaded, or failed or timed out on a mail (which rolls back)."""


class StoppedEarly(EngageError):
    """Work run inline on the event loop was stopped at its time limit and undone: run it
    again off the loop."""


class SecretError(EngageError):
    """A secret reference cannot be resolved (missing key, wrong key, unset variable...)."""


class WriteConflict(StoreError):
    """Another transaction committed the same new row first (a customer two listeners made
    at once from the same new sender), or the two deadlocked: the mail's transaction was
    rolled back; taken again at once, it finds that row (or the other has committed)."""


class LeaseLost(StoreError):
    """This daemon no longer holds the listener's lease (issue 16): the mail's transaction
    was rolled back, so nothing of it is committed nor moved; another daemon takes it."""
