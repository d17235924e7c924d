"""The Dovecot sandbox itself: every other IMAP/POP3 test trusts what is checked here."""

from __future__ import annotations

import email
import imaplib
import poplib
import re
import socket
import ssl
import subprocess
import time
from datetime import UTC, datetime
from email import policy
from pathlib import Path

import pytest

from devkit.dovecot import DovecotSandbox, free_port
from devkit.samples import sample_messages
from engage_listener.sources.imap import utf7 as imap_utf7

FOLDER = "Entrée clients/Nuevo ñ"


def _caps(sandbox: DovecotSandbox, user: str) -> set[str]:
    """Capabilities after login, which are the ones a client must act on."""
    with imaplib.IMAP4(sandbox.host, sandbox.imap_port) as conn:
        conn.login(user, sandbox.PASSWORD)
        typ, data = conn.capability()
        assert typ == "OK"
        return set(data[-1].decode().upper().split())


def test_config_is_valid_and_loopback_only(dovecot: DovecotSandbox) -> None:
    out = subprocess.run(
        ["doveconf", "-c", str(dovecot.config_file), "-n"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "listen = 127.0.0.1" in out
    assert "mail_location = maildir:~/Maildir:LAYOUT=fs" in out
    assert "/etc/dovecot" not in out


def test_imap_plain_login(dovecot: DovecotSandbox, mailbox_user: str) -> None:
    with imaplib.IMAP4(dovecot.host, dovecot.imap_port) as conn:
        assert "STARTTLS" in conn.capabilities
        assert conn.login(mailbox_user, dovecot.PASSWORD)[0] == "OK"
        assert conn.select("INBOX")[0] == "OK"


def test_wrong_password_refused(dovecot: DovecotSandbox, mailbox_user: str) -> None:
    with imaplib.IMAP4(dovecot.host, dovecot.imap_port) as conn, pytest.raises(imaplib.IMAP4.error):
        conn.login(mailbox_user, "not-" + dovecot.PASSWORD)
    pop = poplib.POP3(dovecot.host, dovecot.pop3_port)
    pop.user(mailbox_user)
    with pytest.raises(poplib.error_proto):
        pop.pass_("not-" + dovecot.PASSWORD)
    pop.close()


def test_imap_starttls_verifies_against_ca(dovecot: DovecotSandbox, mailbox_user: str) -> None:
    ctx = ssl.create_default_context(cafile=str(dovecot.ca_file))
    with imaplib.IMAP4(dovecot.host, dovecot.imap_port) as conn:
        conn.starttls(ssl_context=ctx)
        assert isinstance(conn.sock, ssl.SSLSocket)
        assert conn.sock.version() in ("TLSv1.2", "TLSv1.3")
        assert conn.login(mailbox_user, dovecot.PASSWORD)[0] == "OK"


def test_imaps_by_name_and_untrusted_without_ca(dovecot: DovecotSandbox, mailbox_user: str) -> None:
    ctx = ssl.create_default_context(cafile=str(dovecot.ca_file))
    with imaplib.IMAP4_SSL("localhost", dovecot.imaps_port, ssl_context=ctx) as conn:
        assert conn.login(mailbox_user, dovecot.PASSWORD)[0] == "OK"
    with pytest.raises(ssl.SSLCertVerificationError):
        system_cas_only = ssl.create_default_context()
        imaplib.IMAP4_SSL(dovecot.host, dovecot.imaps_port, ssl_context=system_cas_only)


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated:DeprecationWarning")
def test_tls_below_1_2_refused(dovecot: DovecotSandbox) -> None:
    ctx = ssl.create_default_context(cafile=str(dovecot.ca_file))
    ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    try:
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    except ssl.SSLError:
        pytest.skip("local OpenSSL cannot even offer TLS 1.1")
    with pytest.raises((ssl.SSLError, OSError)):
        imaplib.IMAP4_SSL(dovecot.host, dovecot.imaps_port, ssl_context=ctx)


def test_pop3s_and_stls(dovecot: DovecotSandbox, mailbox_user: str) -> None:
    ctx = ssl.create_default_context(cafile=str(dovecot.ca_file))
    dovecot.append(mailbox_user, "INBOX", sample_messages(1)[0])
    pops = poplib.POP3_SSL(dovecot.host, dovecot.pop3s_port, context=ctx)
    pops.user(mailbox_user)
    pops.pass_(dovecot.PASSWORD)
    assert pops.stat()[0] == 1
    uidl = pops.uidl(1).decode().split()
    assert re.fullmatch(r"00000001[0-9a-f]{8}", uidl[-1])  # pop3_uidl_format = %08Xu%08Xv
    pops.quit()
    pop = poplib.POP3(dovecot.host, dovecot.pop3_port)
    assert "STLS" in pop.capa()
    pop.stls(ctx)
    pop.user(mailbox_user)
    pop.pass_(dovecot.PASSWORD)
    assert pop.stat()[0] == 1
    pop.quit()


def test_folder_round_trip_non_ascii(dovecot: DovecotSandbox, mailbox_user: str) -> None:
    raws = sample_messages()
    assert not dovecot.folder_exists(mailbox_user, FOLDER)
    dovecot.create_folder(mailbox_user, FOLDER)
    dovecot.create_folder(mailbox_user, FOLDER)  # idempotent
    assert dovecot.folder_exists(mailbox_user, FOLDER)
    assert dovecot.count(mailbox_user, FOLDER) == 0
    assert dovecot.uids(mailbox_user, FOLDER) == []
    assert dovecot.messages(mailbox_user, FOLDER) == []

    dovecot.append_many(mailbox_user, FOLDER, raws[:-1])
    dovecot.append(mailbox_user, FOLDER, raws[-1], date=datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC))
    assert dovecot.count(mailbox_user, FOLDER) == len(raws)
    assert dovecot.uids(mailbox_user, FOLDER) == list(range(1, len(raws) + 1))
    assert dovecot.messages(mailbox_user, FOLDER) == raws

    with imaplib.IMAP4(dovecot.host, dovecot.imap_port) as conn:
        conn.login(mailbox_user, dovecot.PASSWORD)
        lines = [line for line in conn.list()[1] if isinstance(line, bytes)]
        assert b'"Entr&AOk-e clients/Nuevo &APE-"' in b"".join(lines)
        wire_names = [line.decode().rsplit(' "/" ', 1)[1].strip('"') for line in lines]
        assert FOLDER in [imap_utf7.decode(name) for name in wire_names]
        conn.select('"' + imap_utf7.encode(FOLDER) + '"', readonly=True)
        fetched = conn.uid("FETCH", str(len(raws)), "(INTERNALDATE FLAGS)")[1][0]
        assert isinstance(fetched, bytes)
        assert b'INTERNALDATE "06-May-2024 07:08:09 +0000"' in fetched
        assert b"\\Seen" not in fetched  # the helpers only peek

    dovecot.delete_folder(mailbox_user, FOLDER)
    assert not dovecot.folder_exists(mailbox_user, FOLDER)
    with pytest.raises(RuntimeError):
        dovecot.count(mailbox_user, FOLDER)


def test_append_creates_nested_folder(dovecot: DovecotSandbox, mailbox_user: str) -> None:
    dovecot.append(mailbox_user, "IMAP/New", b"Subject: hi\r\n\r\nbody\r\n")
    assert dovecot.messages(mailbox_user, "IMAP/New") == [b"Subject: hi\r\n\r\nbody\r\n"]
    assert dovecot.count(mailbox_user, "INBOX") == 0


def test_users_are_isolated(dovecot: DovecotSandbox, mailbox_user: str) -> None:
    dovecot.append(mailbox_user, "INBOX", b"Subject: mine\r\n\r\nx\r\n")
    assert dovecot.count(mailbox_user + "-other", "INBOX") == 0


def test_idle_and_move_advertised_by_default(dovecot: DovecotSandbox, mailbox_user: str) -> None:
    caps = _caps(dovecot, mailbox_user)
    assert {"IDLE", "MOVE", "UIDPLUS"} <= caps


def test_idle_notifies_promptly(dovecot: DovecotSandbox, mailbox_user: str) -> None:
    with socket.create_connection((dovecot.host, dovecot.imap_port), timeout=10) as sock:
        stream = sock.makefile("rwb")

        def command(line: str, until: bytes) -> bytes:
            stream.write(line.encode() + b"\r\n")
            stream.flush()
            seen = b""
            while not seen.startswith(until):
                seen = stream.readline()
                assert seen, "connection closed"
            return seen

        stream.readline()  # greeting
        command(f"a LOGIN {mailbox_user} {dovecot.PASSWORD}", b"a OK")
        command("b SELECT INBOX", b"b OK")
        command("c IDLE", b"+ ")
        started = time.monotonic()
        dovecot.append(mailbox_user, "INBOX", b"Subject: ping\r\n\r\nx\r\n")
        while b"EXISTS" not in (line := stream.readline()):
            assert line, "connection closed"
        assert line == b"* 1 EXISTS\r\n"
        assert time.monotonic() - started < 3
        command("DONE", b"c OK")


@pytest.mark.dovecot  # starts a Dovecot of its own
def test_idle_and_move_can_be_hidden(tmp_path: Path, mailbox_user: str) -> None:
    with DovecotSandbox(tmp_path / "bare", idle=False, move=False) as bare:
        caps = _caps(bare, mailbox_user)
        assert "IDLE" not in caps
        assert "MOVE" not in caps
        assert {"UIDPLUS", "UNSELECT", "IMAP4REV1"} <= caps
    with DovecotSandbox(tmp_path / "stock") as stock:
        # Only IDLE and MOVE go: the restated list matches this Dovecot's default.
        assert _caps(stock, mailbox_user) - {"IDLE", "MOVE"} == caps


@pytest.mark.dovecot  # starts a Dovecot of its own
def test_restart_keeps_mail_and_ports(tmp_path: Path, mailbox_user: str) -> None:
    sandbox = DovecotSandbox(tmp_path / "dc")
    with sandbox:
        ports = (sandbox.imap_port, sandbox.imaps_port, sandbox.pop3_port, sandbox.pop3s_port)
        assert len(set(ports)) == 4
        sandbox.append_many(mailbox_user, FOLDER, sample_messages(3))
        uids = sandbox.uids(mailbox_user, FOLDER)
        sandbox.restart()
        assert sandbox.ports == ports
        assert sandbox.uids(mailbox_user, FOLDER) == uids
        assert sandbox.messages(mailbox_user, FOLDER) == sample_messages(3)
    sandbox.stop()  # idempotent
    with pytest.raises(OSError):
        socket.create_connection((sandbox.host, sandbox.imap_port), timeout=2)


@pytest.mark.dovecot  # starts a Dovecot of its own
def test_start_failure_reports_log(tmp_path: Path) -> None:
    sandbox = DovecotSandbox(tmp_path / "broken", extra_config="no_such_setting = 1\n")
    with pytest.raises(RuntimeError, match="no_such_setting"):
        sandbox.start()


def test_kill_connections_drops_session(dovecot: DovecotSandbox, mailbox_user: str) -> None:
    conn = imaplib.IMAP4(dovecot.host, dovecot.imap_port)
    conn.login(mailbox_user, dovecot.PASSWORD)
    conn.select("INBOX")
    bystander = imaplib.IMAP4(dovecot.host, dovecot.imap_port)
    bystander.login(mailbox_user + "-bystander", dovecot.PASSWORD)
    dovecot.kill_connections(mailbox_user)
    deadline = time.monotonic() + 10
    with pytest.raises((imaplib.IMAP4.abort, OSError)):
        while time.monotonic() < deadline:
            conn.noop()
            time.sleep(0.1)
    assert bystander.noop()[0] == "OK"
    bystander.logout()
    dovecot.kill_connections("nobody-is-logged-in-as-this")  # not an error


def test_sample_messages() -> None:
    raws = sample_messages(16, seed=3)
    assert raws == sample_messages(16, seed=3)
    assert raws != sample_messages(16, seed=4)
    msgs = [email.message_from_bytes(r, policy=policy.default) for r in raws]
    assert len({m["Message-ID"] for m in msgs}) == 16
    assert all(m["Date"] and m["From"] for m in msgs)
    assert all(b"\r\n" in r and b"\n" not in r.replace(b"\r\n", b"") for r in raws)
    subjects = [str(m["Subject"]) for m in msgs]
    assert any(s.startswith(("RE: ", "Re: ")) for s in subjects)
    assert any("=?" in r.split(b"\r\n\r\n")[0].decode("ascii") for r in raws)  # encoded words
    types = {m.get_content_type() for m in msgs}
    assert {"text/plain", "text/html", "multipart/mixed"} <= types
    assert any(part.get_content_type() == "application/pdf" for m in msgs for part in m.walk())
    latin = [m for m in msgs if m.get_content_charset() == "iso-8859-1"]
    assert latin
    assert latin[0]["Content-Transfer-Encoding"] == "quoted-printable"
    assert "Reclamação" in str(latin[0]["Subject"])
    assert "reembolso" in latin[0].get_content()


def test_free_port_is_bindable() -> None:
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
