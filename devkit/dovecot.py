"""A throwaway Dovecot on loopback for the tests, the demo and the benchmarks.

A real server catches what mocks cannot (capabilities, UIDVALIDITY, IDLE timing,
TLS, dropped sessions), so everything here drives stock Dovecot 2.3 from a
config written into a directory the sandbox owns; the system service is never
touched.
"""

from __future__ import annotations

import datetime as dt
import grp
import imaplib
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import weakref
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path

from devkit.certs import write_certs
from engage_listener.sources.imap import utf7 as imap_utf7

__all__ = ["DOVECOT_BIN", "DovecotSandbox", "free_port"]

DOVECOT_BIN = shutil.which("dovecot") or "/usr/sbin/dovecot"
DOVEADM_BIN = shutil.which("doveadm") or "/usr/bin/doveadm"

# Dovecot 2.3's built-in post-login capability list. `imap_capability` can only
# replace the list, not subtract from it, so hiding IDLE/MOVE means restating it.
_IMAP_CAPS = (
    "IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE SORT SORT=DISPLAY THREAD=REFERENCES"
    " THREAD=REFS THREAD=ORDEREDSUBJECT MULTIAPPEND URL-PARTIAL CATENATE UNSELECT CHILDREN"
    " NAMESPACE UIDPLUS LIST-EXTENDED I18NLEVEL=1 CONDSTORE QRESYNC ESEARCH ESORT SEARCHRES"
    " WITHIN CONTEXT=SEARCH LIST-STATUS BINARY MOVE SNIPPET=FUZZY PREVIEW=FUZZY PREVIEW"
    " STATUS=SIZE SAVEDATE LITERAL+ NOTIFY"
)


def free_port() -> int:
    """A loopback port nobody listens on right now (racy, but fine for tests)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _quote(name: str) -> str:
    """An IMAP quoted string of the modified-UTF-7 name (imaplib quotes nothing itself)."""
    wire = imap_utf7.encode(name)
    return '"' + wire.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _stop_process(proc: subprocess.Popen[bytes]) -> None:
    """Stop the master and every process of its group: open sessions drop too.

    The master alone leaves the imap/pop3 processes of open sessions serving their
    clients, which is not what a server stop looks like to a client.
    """
    if proc.poll() is None:
        _signal_group(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=2.5)  # a clean shutdown takes about 1 s
        except subprocess.TimeoutExpired:
            # A login process caught mid-handoff can stall shutdown for 5 s on a peer
            # that is already gone; it holds no mail, so cut the whole group short.
            _signal_group(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    _signal_group(proc.pid, signal.SIGKILL)  # whatever outlived the master


def _signal_group(group: int, sig: signal.Signals) -> None:
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(group, sig)


class DovecotSandbox:
    """One private Dovecot instance (IMAP, IMAPS, POP3, POP3S on 127.0.0.1).

    Any user name logs in with :attr:`PASSWORD`, so tests isolate themselves
    simply by inventing a fresh user. With ``oauth2_introspection_url`` XOAUTH2
    (and OAUTHBEARER) logins are offered too, their tokens validated for real by
    Dovecot's oauth2 passdb against that introspection endpoint.
    """

    PASSWORD = "sandbox-secret"  # noqa: S105 - a throwaway test server
    host = "127.0.0.1"

    def __init__(
        self,
        root: Path,
        *,
        idle: bool = True,
        move: bool = True,
        uidplus: bool = True,
        extra_config: str = "",
        oauth2_introspection_url: str | None = None,
    ) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        ports: set[int] = set()
        while len(ports) < 4:
            ports.add(free_port())
        self.imap_port, self.imaps_port, self.pop3_port, self.pop3s_port = sorted(ports)
        self.config_file = self.root / "dovecot.conf"
        self.log_file = self.root / "dovecot.log"
        self._stderr_file = self.root / "dovecot.stderr"
        self._proc: subprocess.Popen[bytes] | None = None
        self._stopper: weakref.finalize[..., object] | None = None
        self.ca_file, cert_file, key_file = write_certs(self.root)

        # Dovecot refuses uid 0 for mail, so as root mail belongs to an unprivileged
        # system user; that user cannot traverse a private tmp_path (0700 parents),
        # so homes and sockets then live in a /tmp directory it can reach.
        # Socket paths are also limited to ~107 bytes, hence the short fallback.
        runtime = self.root
        if os.getuid() == 0 or len(str(self.root)) > 60:
            runtime = Path(tempfile.mkdtemp(prefix="dovecot-sb-"))
            runtime.chmod(0o755)
            weakref.finalize(self, shutil.rmtree, runtime, True)
        self.home_dir = runtime / "home"
        self.home_dir.mkdir(exist_ok=True)
        if os.getuid() == 0:
            mail = pwd.getpwnam("mail")
            internal, login, group = "dovecot", "dovenull", "dovecot"
            os.chown(self.home_dir, mail.pw_uid, mail.pw_gid)
            if not (self.root / "home").exists():
                (self.root / "home").symlink_to(self.home_dir)
        else:
            mail = pwd.getpwuid(os.getuid())
            internal = login = mail.pw_name
            group = grp.getgrgid(os.getgid()).gr_name
        self.mail_uid, self.mail_gid = mail.pw_uid, mail.pw_gid

        offered = (("IDLE", idle), ("MOVE", move), ("UIDPLUS", uidplus))
        hidden = {c for c, keep in offered if not keep}
        caps = [c for c in _IMAP_CAPS.split() if c not in hidden]
        cap_line = f"imap_capability = {' '.join(caps)}" if hidden else ""
        mechanisms, oauth2_passdb, static_extra = self._oauth2(oauth2_introspection_url)

        def listener(name: str, port: int, ssl: str) -> str:
            return f"  inet_listener {name} {{\n    port = {port}\n    ssl = {ssl}\n  }}"

        # Chroots need root, and the sandbox has nothing to protect anyway.
        chroots = "\n".join(
            f"service {s} {{\n  chroot =\n}}"
            for s in ("imap-login", "pop3-login", "imap-urlauth-login")
        )
        self.config_file.write_text(
            f"""# Written by devkit.dovecot; do not edit.
instance_name = engage-sandbox-{self.imap_port}
protocols = imap pop3
listen = {self.host}
base_dir = {runtime / "run"}
state_dir = {self.root / "state"}
log_path = {self.log_file}
default_internal_user = {internal}
default_login_user = {login}
default_internal_group = {group}
default_process_limit = 500
default_client_limit = 2000
first_valid_uid = {mail.pw_uid}
ssl = yes
ssl_cert = <{cert_file}
ssl_key = <{key_file}
ssl_min_protocol = TLSv1.2
disable_plaintext_auth = no
auth_mechanisms = {mechanisms}
auth_cache_size = 0
auth_failure_delay = 0
auth_verbose = yes
{oauth2_passdb}passdb {{
  driver = static
  args = password={self.PASSWORD}{static_extra}
}}
userdb {{
  driver = static
  args = uid={mail.pw_uid} gid={mail.pw_gid} home={self.home_dir}/%u
}}
mail_location = maildir:~/Maildir:LAYOUT=fs
mail_plugins =
namespace inbox {{
  separator = /
  inbox = yes
}}
mailbox_idle_check_interval = 1 secs
# No stats: nothing reads them, and a quick stop races the stats handshake (5 s stall).
stats_writer_socket_path =
pop3_uidl_format = %08Xu%08Xv
{cap_line}
protocol imap {{
  mail_max_userip_connections = 100
}}
service imap-login {{
{listener("imap", self.imap_port, "no")}
{listener("imaps", self.imaps_port, "yes")}
}}
service pop3-login {{
{listener("pop3", self.pop3_port, "no")}
{listener("pop3s", self.pop3s_port, "yes")}
}}
service auth-worker {{
  user = $default_internal_user
}}
service anvil {{
  chroot =
  # No per-IP auth penalty: one wrong-password test would slow every later login.
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
{chroots}
{extra_config}
"""
        )

    def _oauth2(self, introspection_url: str | None) -> tuple[str, str, str]:
        """(auth_mechanisms, oauth2 passdb, static passdb extra) for XOAUTH2/OAUTHBEARER.

        Dovecot POSTs every token to ``introspection_url`` (``token=...``) and accepts
        the login when the JSON answer has ``"active": true`` and a ``"username"`` equal
        to the login name; plain logins keep working with :attr:`PASSWORD`.
        """
        if introspection_url is None:
            return "plain login", "", ""
        args = self.root / "dovecot-oauth2.conf.ext"
        args.write_text(
            f"""introspection_mode = post
introspection_url = {introspection_url}
force_introspection = yes
username_attribute = username
active_attribute = active
active_value = true
timeout_msecs = 10000
"""
        )
        passdb = "passdb {\n  driver = oauth2\n  mechanisms = xoauth2 oauthbearer\n"
        passdb += f"  args = {args}\n}}\n"
        # The static password then serves plain logins only: a token never meets it.
        return "plain login xoauth2 oauthbearer", passdb, "\n  mechanisms = plain login"

    @property
    def ports(self) -> tuple[int, int, int, int]:
        return self.imap_port, self.imaps_port, self.pop3_port, self.pop3s_port

    def _log_tail(self, lines: int = 30) -> str:
        text = ""
        for path in (self._stderr_file, self.log_file):
            if path.exists():
                text += "".join(path.read_text(errors="replace").splitlines(True)[-lines:])
        return text

    def start(self) -> None:
        """Start Dovecot and wait until every listener answers."""
        if self._proc is not None and self._proc.poll() is None:
            return
        (self.root / "state").mkdir(exist_ok=True)
        with self._stderr_file.open("ab") as err:
            proc = subprocess.Popen(
                [DOVECOT_BIN, "-F", "-c", str(self.config_file)],
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a ^C aimed at pytest must not kill it mid-test
            )
        self._proc, self._stopper = proc, weakref.finalize(self, _stop_process, proc)
        deadline = time.monotonic() + 15
        pending = list(self.ports)
        while pending:
            if proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"dovecot did not come up (exit code {proc.returncode}) on ports "
                    f"{pending}; log tail:\n{self._log_tail()}"
                )
            try:
                socket.create_connection((self.host, pending[0]), timeout=1).close()
                pending.pop(0)
            except OSError:
                time.sleep(0.05)

    def stop(self) -> None:
        """Stop Dovecot (all sessions drop); a no-op when not running."""
        if self._stopper is not None:
            self._stopper()  # a finalizer runs at most once, and at exit if never called
        self._proc = self._stopper = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def kill_connections(self, user: str) -> None:
        """Drop every IMAP/POP3 session of ``user``, like a server-side disconnect.

        A session registers with anvil just after its login reply, so a kick right
        after login can miss it: retry "no users kicked" for up to a second.
        """
        cmd = [DOVEADM_BIN, "-c", str(self.config_file), "kick", user]
        deadline = time.monotonic() + 1
        while True:
            result = subprocess.run(cmd, capture_output=True, text=True, check=False)
            output = result.stdout + result.stderr
            if result.returncode == 0 or (
                "no users kicked" in output and time.monotonic() > deadline
            ):
                return
            if "no users kicked" not in output:
                raise RuntimeError(f"doveadm kick {user} failed: {output}")
            time.sleep(0.05)

    def __enter__(self) -> DovecotSandbox:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- seeding and inspection (plain IMAP, synchronous, stdlib only) --

    @contextmanager
    def _imap(self, user: str) -> Iterator[imaplib.IMAP4]:
        conn = imaplib.IMAP4(self.host, self.imap_port, timeout=30)
        try:
            conn.login(user, self.PASSWORD)
            yield conn
        finally:
            with suppress(imaplib.IMAP4.error, OSError):
                conn.logout()

    @staticmethod
    def _check(typ: str, data: Sequence[object], what: str) -> None:
        if typ != "OK":
            raise RuntimeError(f"{what} failed: {typ} {data!r}")

    def folder_exists(self, user: str, folder: str) -> bool:
        with self._imap(user) as conn:
            typ, _ = conn.status(_quote(folder), "(MESSAGES)")
        return typ == "OK"

    def create_folder(self, user: str, folder: str) -> None:
        with self._imap(user) as conn:
            self._create(conn, folder)

    def _create(self, conn: imaplib.IMAP4, folder: str) -> None:
        if conn.status(_quote(folder), "(MESSAGES)")[0] != "OK":
            typ, data = conn.create(_quote(folder))
            self._check(typ, data, f"CREATE {folder!r}")

    def delete_folder(self, user: str, folder: str) -> None:
        with self._imap(user) as conn:
            typ, data = conn.delete(_quote(folder))
        self._check(typ, data, f"DELETE {folder!r}")

    def append(self, user: str, folder: str, raw: bytes, date: dt.datetime | None = None) -> None:
        with self._imap(user) as conn:
            self._create(conn, folder)
            when = imaplib.Time2Internaldate(date) if date is not None else None
            typ, data = conn.append(_quote(folder), "", when, raw)
        self._check(typ, data, f"APPEND to {folder!r}")

    def append_many(self, user: str, folder: str, raws: Iterable[bytes]) -> None:
        with self._imap(user) as conn:
            self._create(conn, folder)
            for raw in raws:
                typ, data = conn.append(_quote(folder), "", None, raw)
                self._check(typ, data, f"APPEND to {folder!r}")

    def count(self, user: str, folder: str) -> int:
        """Number of messages; raises RuntimeError if the folder does not exist."""
        with self._imap(user) as conn:
            typ, data = conn.status(_quote(folder), "(MESSAGES)")
        self._check(typ, data, f"STATUS {folder!r}")
        match = re.search(rb"MESSAGES (\d+)", data[0] if isinstance(data[0], bytes) else b"")
        if match is None:
            raise RuntimeError(f"unexpected STATUS reply {data!r}")
        return int(match.group(1))

    def _select(self, conn: imaplib.IMAP4, folder: str) -> list[int]:
        typ, data = conn.select(_quote(folder), readonly=True)
        self._check(typ, data, f"SELECT {folder!r}")
        typ, data = conn.uid("SEARCH", "ALL")
        self._check(typ, data, f"UID SEARCH in {folder!r}")
        return sorted(int(u) for u in b" ".join(d for d in data if isinstance(d, bytes)).split())

    def uids(self, user: str, folder: str) -> list[int]:
        with self._imap(user) as conn:
            return self._select(conn, folder)

    def messages(self, user: str, folder: str) -> list[bytes]:
        """Raw bytes of every message in UID order (BODY.PEEK: leaves \\Seen alone)."""
        found: dict[int, bytes] = {}
        with self._imap(user) as conn:
            if not self._select(conn, folder):
                return []
            typ, data = conn.uid("FETCH", "1:*", "(UID BODY.PEEK[])")
            self._check(typ, data, f"UID FETCH in {folder!r}")
        for item in data:
            if isinstance(item, tuple):
                match = re.search(rb"UID (\d+)", item[0])
                if match is None:
                    raise RuntimeError(f"FETCH reply without UID: {item[0]!r}")
                found[int(match.group(1))] = item[1]
        return [found[uid] for uid in sorted(found)]
