"""The OAuth2 token cache: one JSON file in the state directory, secrets encrypted.

Refresh tokens are as good as a password for as long as they live, so the file is
mode 0600 and every secret in it (refresh tokens, access tokens, MSAL's cache) is
sealed with the same AES-256-GCM key as the `enc:` passwords (`engage-listener
keygen`). What stays readable is only what `engage-listener auth status` shows:
the kind of credential, the account, the expiry and the time of the last refresh.

Writes are read-modify-write under an exclusive lock on a side file, then an
atomic rename, so the daemon and a concurrent `auth login` never lose each
other's entries, and a crash never leaves half a file. Every read goes back to
the file, so a new sign-in made by `auth login` is seen by a running daemon.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engage_listener.config import secret_refs as secrets
from engage_listener.errors import SecretError
from engage_listener.observe.logs import register_secret

FILE_NAME = "oauth-tokens.json"
_VERSION = 1
_SECRET_KEYS = frozenset({"secret", "access_token", "refresh_token", "id_token"})


def register_state_secrets(state: object) -> None:
    """Register every token in a cache entry's secret part (MSAL's cache is JSON text)."""
    if isinstance(state, dict):
        for key, value in state.items():
            if key == "msal" and isinstance(value, str):
                with contextlib.suppress(ValueError):
                    register_state_secrets(json.loads(value))
            elif key in _SECRET_KEYS and isinstance(value, str):
                register_secret(value)
            else:
                register_state_secrets(value)
    elif isinstance(state, list):
        for item in state:
            register_state_secrets(item)


def default_path(environ: Mapping[str, str] = os.environ) -> Path:
    """$STATE_DIRECTORY (systemd StateDirectory=), else /var/lib/engage-listener."""
    state = environ.get("STATE_DIRECTORY", "").split(":")[0]
    return (Path(state) if state else secrets.DEFAULT_STATE_DIR) / FILE_NAME


def open_cache(key_path: Path, path: Path | None = None) -> TokenCache:
    """The one TokenCache of this process for `path` (default: `default_path()`).

    Providers of one mailbox (IMAP or POP3 listener, SMTP sender) share a single
    account object through it, so a refresh token is never used twice at once.
    Raises SecretError when the key cannot be read.
    """
    where = (path or default_path()).absolute()
    with _OPEN_LOCK:
        cache = _OPEN.get(where)
        if cache is None:
            cache = _OPEN[where] = TokenCache(where, secrets.load_key(key_path))
    return cache


@dataclass(frozen=True)
class CacheEntry:
    """One account's state: `meta` is shown by `auth status`, `secret` never is."""

    meta: dict[str, Any]
    secret: dict[str, Any] = field(repr=False)
    revision: int = 0


_OPEN: dict[Path, TokenCache] = {}
_OPEN_LOCK = threading.Lock()


class TokenCache:
    """Encrypted token store for every OAuth2 account of one installation."""

    def __init__(self, path: Path, key: bytes) -> None:
        self.path = Path(path)
        self._key = key
        self._lock = threading.Lock()  # threads of this process; flock covers others
        self.shared: dict[str, Any] = {}  # per-account objects shared by providers

    def __repr__(self) -> str:
        return f"TokenCache({str(self.path)!r})"

    # ----- reading ------------------------------------------------------------------
    def _read(self) -> dict[str, Any]:
        try:
            raw = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise SecretError(f"cannot read token cache {self.path}: {exc.strerror}") from None
        try:
            data = json.loads(raw)
        except ValueError:
            raise SecretError(f"token cache {self.path} is damaged (not JSON)") from None
        entries = data.get("entries") if isinstance(data, dict) else None
        return entries if isinstance(entries, dict) else {}

    def get(self, name: str) -> CacheEntry | None:
        """The entry, decrypted; None when there is none."""
        with self._lock:
            record = self._read().get(name)
        if not isinstance(record, dict):
            return None
        try:
            sealed = str(record.get("secret", "")).removeprefix("enc:")
            plain = json.loads(secrets._decrypt(sealed, self._key))  # the enc:v1 format
        except (SecretError, ValueError):
            raise SecretError(
                f"token cache {self.path}: entry {name} cannot be decrypted with the "
                "configured key; sign in again with `engage-listener auth login`"
            ) from None
        if not isinstance(plain, dict) or plain.get("name") != name:
            raise SecretError(f"token cache {self.path}: entry {name} does not belong there")
        register_state_secrets(plain.get("secret"))  # decrypted: from now on never shown
        meta = record.get("meta")
        return CacheEntry(
            dict(meta) if isinstance(meta, dict) else {},
            dict(plain.get("secret") or {}),
            int(record.get("revision", 0)),
        )

    def revision(self, name: str) -> int:
        """The entry's write counter (0: no entry); cheap, nothing is decrypted."""
        with self._lock:
            record = self._read().get(name)
        return int(record.get("revision", 0)) if isinstance(record, dict) else 0

    def metas(self) -> dict[str, dict[str, Any]]:
        """Every entry's readable part, for status displays."""
        with self._lock:
            entries = self._read()
        return {
            name: dict(record.get("meta") or {})
            for name, record in entries.items()
            if isinstance(record, dict)
        }

    # ----- writing ------------------------------------------------------------------
    def put(self, name: str, meta: Mapping[str, Any], secret: Mapping[str, Any]) -> int:
        """Store (replace) an entry at once; returns its new revision."""
        sealed = secrets.encrypt(json.dumps({"name": name, "secret": dict(secret)}), self._key)
        with self._locked():
            entries = self._read()
            old = entries.get(name)
            revision = (int(old.get("revision", 0)) if isinstance(old, dict) else 0) + 1
            entries[name] = {"meta": dict(meta), "secret": sealed, "revision": revision}
            self._write(entries)
        return revision

    def update_meta(self, name: str, **changes: Any) -> None:
        """Change readable fields only (e.g. the last error), keeping the secret."""
        with self._locked():
            entries = self._read()
            record = entries.get(name)
            if not isinstance(record, dict):
                return
            record["meta"] = {**dict(record.get("meta") or {}), **changes}
            self._write(entries)

    def delete(self, name: str) -> None:
        with self._locked():
            entries = self._read()
            if entries.pop(name, None) is not None:
                self._write(entries)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        directory = self.path.parent
        if not directory.exists():
            directory.mkdir(mode=0o700, parents=True)
        lock_path = self.path.with_name(self.path.name + ".lock")
        with self._lock:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            _give_to_directory_owner(fd, directory)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)  # closing releases the lock

    def _write(self, entries: dict[str, Any]) -> None:
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                os.fchmod(out.fileno(), 0o600)
                _give_to_directory_owner(out.fileno(), self.path.parent)
                json.dump({"version": _VERSION, "entries": entries}, out, indent=1)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


def _give_to_directory_owner(fd: int, directory: Path) -> None:
    """Root writing into someone else's state directory (`auth login` from a shell, the
    service running as systemd's DynamicUser) gives the file to that directory's owner:
    a root-owned 0600 file there is one the service can never read."""
    if os.geteuid() != 0:
        return
    info = directory.stat()
    if info.st_uid != 0 or info.st_gid != 0:
        os.fchown(fd, info.st_uid, info.st_gid)
