"""Secret references for Password and ClientSecret elements.

Operators keep the configuration in an XML file that is often world-readable,
backed up or put under version control, so a password need not be written in
it in clear. Every secret element accepts one of:

- plain text (anything without a prefix below);
- ``enc:v1:...`` made by ``engage-listener encrypt-password`` (AES-256-GCM with
  a key file created by ``engage-listener keygen``);
- ``env:NAME`` for an environment variable (systemd ``Environment=``, a
  container's secret injection);
- ``file:PATH`` for a file's contents, one trailing newline stripped (a
  relative PATH is relative to the configuration file's directory);
- ``credential:NAME`` for systemd ``LoadCredential=NAME:...`` (read from
  ``$CREDENTIALS_DIRECTORY``, which only the service can read);
- ``plain:TEXT`` for a literal password that itself starts with one of these
  prefixes (``plain:env:x`` is the password ``env:x``).

Errors are `SecretError` with a message that names neither the value nor the
key, so the configuration loader can report them against the element.
"""

from __future__ import annotations

import base64
import binascii
import getpass
import os
import re
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import TextIO

from engage_listener.errors import SecretError
from engage_listener.observe.logs import register_secret

KEY_NAME = "engage-listener.key"
DEFAULT_STATE_DIR = Path("/var/lib/engage-listener")
DEFAULT_CONFIG_DIR = Path("/etc/engage-listener")  # where the README keeps the XML and key

_ENC_PREFIX = "enc:"
_ENC_VERSION = "v1:"
_AAD = b"engage-listener v1"
_KEY_BYTES = 32
_NONCE_BYTES = 12
_TAG_BYTES = 16
_DECRYPT_FAILED = "cannot decrypt: wrong key or tampered value"


def default_key_path(
    environ: Mapping[str, str] = os.environ, config_dir: Path | None = None
) -> Path:
    """Where the key lives: the first existing of `key_candidates`, else the last of them.

    The service finds it as a systemd credential; a command run from a shell finds the
    very same file next to the configuration (the README's layout keeps it in
    /etc/engage-listener and hands it to the service with LoadCredential=). Looking only
    in the state directory made every shell command fail, and its advice (`keygen`)
    create a second, different key.
    """
    candidates = key_candidates(environ, config_dir)
    return next((path for path in candidates if path.is_file()), candidates[-1])


def key_candidates(
    environ: Mapping[str, str] = os.environ, config_dir: Path | None = None
) -> list[Path]:
    """Where a key is looked for, in order: the systemd credential, the configuration's
    directory (DEFAULT_CONFIG_DIR when not given), the state directory."""
    found: list[Path] = []
    credentials = environ.get("CREDENTIALS_DIRECTORY")
    if credentials:
        found.append(Path(credentials) / KEY_NAME)
    found.append((config_dir or DEFAULT_CONFIG_DIR) / KEY_NAME)
    state = environ.get("STATE_DIRECTORY", "").split(":")[0]
    found.append((Path(state) if state else DEFAULT_STATE_DIR) / KEY_NAME)
    return found


def generate_key(path: Path) -> None:
    """Create a new random key file readable by its owner only; never replace an existing one.

    Overwriting a key would make every ``enc:`` value already written unreadable.
    """
    missing = [p for p in (path.parent, *path.parent.parents) if not p.exists()]
    try:
        for directory in reversed(missing):
            directory.mkdir(mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        raise SecretError(f"key file {path} already exists; refusing to overwrite it") from None
    except OSError as exc:
        raise SecretError(f"cannot create key file {path}: {exc.strerror}") from None
    with os.fdopen(fd, "w", encoding="ascii") as out:
        os.fchmod(fd, 0o600)  # the umask may only narrow the mode; be explicit anyway
        out.write(base64.urlsafe_b64encode(os.urandom(_KEY_BYTES)).decode("ascii") + "\n")


def load_key(path: Path) -> bytes:
    """Read a key file written by `generate_key`, with a message an operator can act on.

    Like ssh with a private key, a key file that group or others may access is
    refused: whoever can read it can decrypt every ``enc:`` value and the token
    cache. The mode is checked on the opened file (no swap in between).
    """
    try:
        with path.open("rb") as handle:  # fstat of this very file, not of a path
            _check_key_mode(path, os.fstat(handle.fileno()).st_mode)
            text = handle.read(4096).decode("ascii")
    except FileNotFoundError:
        raise SecretError(
            f"no key file at {path}: create one with `engage-listener keygen --key-file "
            f"{path}` (looked for, in order: $CREDENTIALS_DIRECTORY, the configuration's "
            "directory, the state directory; Secrets/KeyFile names it outright)"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not a key file"
        raise SecretError(f"cannot read key file {path}: {reason}") from None
    try:
        key = base64.b64decode(text.strip(), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != _KEY_BYTES:
        raise SecretError(f"key file {path} is malformed: expected {_KEY_BYTES} base64 bytes")
    return key


def _check_key_mode(path: Path, mode: int) -> None:
    if stat.S_ISREG(mode) and mode & 0o077:
        raise SecretError(
            f"key file {path} has mode {stat.S_IMODE(mode):04o}: group or other users may "
            f"read it, so it is refused (like ssh with a private key); "
            f"run `chmod 600 {path}` (owned by the service user)"
        )


def encrypt(secret: str, key: bytes) -> str:
    """Encrypt and authenticate `secret`, so tampering is detected rather than misread."""
    # Imported here, not at the top: start-up time (only enc: values need cryptography).
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # noqa: PLC0415

    nonce = os.urandom(_NONCE_BYTES)
    sealed = AESGCM(key).encrypt(nonce, secret.encode("utf-8"), _AAD)
    return _ENC_PREFIX + _ENC_VERSION + base64.urlsafe_b64encode(nonce + sealed).decode("ascii")


def _decrypt(body: str, key: bytes) -> str:
    # Imported here, not at the top: start-up time (only enc: values need cryptography).
    from cryptography.exceptions import InvalidTag  # noqa: PLC0415
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # noqa: PLC0415

    if not body.startswith(_ENC_VERSION):
        raise SecretError("cannot decrypt: unknown format (expected enc:v1:...)")
    try:
        blob = base64.b64decode(body[len(_ENC_VERSION) :], altchars=b"-_", validate=True)
        if len(blob) < _NONCE_BYTES + _TAG_BYTES:
            raise ValueError("too short")
        plain = AESGCM(key).decrypt(blob[:_NONCE_BYTES], blob[_NONCE_BYTES:], _AAD)
        return plain.decode("utf-8")
    except (binascii.Error, ValueError, InvalidTag):
        raise SecretError(_DECRYPT_FAILED) from None


def _read_stripped(path: Path, what: str) -> str:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise SecretError(f"cannot read {what} {path}: {reason}") from None
    return text.removesuffix("\n").removesuffix("\r")


def resolve(
    value: str,
    *,
    key_path: Path | None = None,
    base_dir: Path | None = None,
    environ: Mapping[str, str] = os.environ,
) -> str:
    """Turn a configured secret reference into the secret, and keep it out of the logs."""
    kind, sep, rest = value.partition(":")
    if not sep or kind not in {"plain", "enc", "env", "file", "credential"}:
        secret = value
    elif kind == "plain":
        secret = rest
    elif kind == "enc":
        secret = _decrypt(rest, load_key(key_path or default_key_path(environ)))
    elif not rest:
        raise SecretError(f"{kind}: needs a name after the colon")
    elif kind == "env":
        if rest not in environ:
            raise SecretError(f"environment variable {rest} is not set")
        secret = environ[rest]
    elif kind == "file":
        path = Path(rest)
        if base_dir is not None and not path.is_absolute():
            path = base_dir / path
        secret = _read_stripped(path, "secret file")
    else:
        secret = _credential(rest, environ)
    register_secret(secret)
    return secret


_BASE64 = re.compile(r"^[A-Za-z0-9+/]{22,}={0,2}$")


def looks_like_original_cipher(value: str) -> bool:
    """Whether a Password typed as is looks like a value the original integration service
    encrypted (``ZR9Zf9oiGhE3olsLuXgnUA==``): base64 of whole 16-byte blocks and nothing
    else. We cannot decrypt those, and would send them as typed, failing every login."""
    if not _BASE64.match(value) or len(value) % 4:
        return False
    try:
        size = len(base64.b64decode(value, validate=True))
    except ValueError:
        return False
    return size > 0 and size % 16 == 0


def _credential(name: str, environ: Mapping[str, str]) -> str:
    if "/" in name or name in {".", ".."}:
        raise SecretError(f"credential name {name!r} is not a plain file name")
    directory = environ.get("CREDENTIALS_DIRECTORY")
    if not directory:
        raise SecretError(
            f"credential:{name} needs systemd LoadCredential= (CREDENTIALS_DIRECTORY is not set)"
        )
    path = Path(directory) / name
    if not path.is_file():
        raise SecretError(f"no credential {name} in {directory} (check LoadCredential=)")
    return _read_stripped(path, "credential")


def read_secret_interactively(
    stream_in: TextIO, stream_err: TextIO, *, confirm: bool = True
) -> str:
    """Read a secret without it ever reaching argv (visible in ps) or the shell history.

    From a terminal it asks without echo (twice when `confirm`); from a pipe it
    reads one line.
    """
    if stream_in.isatty():
        try:
            secret = getpass.getpass("Secret: ", stream=stream_err)
            if confirm and getpass.getpass("Again: ", stream=stream_err) != secret:
                raise SecretError("the two entries differ; nothing was encrypted")
        except EOFError:
            raise SecretError("no secret entered") from None
    else:
        secret = stream_in.readline().removesuffix("\n").removesuffix("\r")
    if not secret:
        raise SecretError("the secret is empty; nothing was encrypted")
    return secret
