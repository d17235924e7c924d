"""The Authentication element: parsing, every problem reported at once, no secret shown."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from engage_listener.config import secret_refs as secrets
from engage_listener.config.auth import AuthConfig
from engage_listener.config.load import parse_config
from engage_listener.config.model import oauth_logins
from engage_listener.errors import ConfigError
from tests.support.config_xml import block, write_config
from tests.support.servers.oauth_server import (
    OAuthTestServer,
    certificate_file,
    service_account_file,
)

SECRET = "cl13nt-s3cr3t-value"


def write(tmp_path: Path, listener_body: str, extra: str = "", kind: str = "ImapListener") -> Path:
    key = tmp_path / "el.key"
    if not key.exists():
        secrets.generate_key(key)
    box = {"HostName": "outlook.office365.com", "UserName": "soporte@contoso.test"}
    listener = block(kind, "Box", box, listener_body + "\n")
    return write_config(
        tmp_path / "el.xml", listener, process=None, store=None, key_file="el.key", tail=extra
    )


def load(path: Path) -> AuthConfig | None:
    config = parse_config(path.read_bytes(), path)
    return config.listeners[0].authentication


def problems(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(path.read_bytes(), path)
    return [f"{p.element}: {p.message}" for p in caught.value.problems]


def test_microsoft_app_only_with_encrypted_secret_needs_no_password(tmp_path: Path) -> None:
    path = write(tmp_path, "")
    enc = secrets.encrypt(SECRET, secrets.load_key(tmp_path / "el.key"))
    path = write(
        tmp_path,
        f"""<Authentication><Type>Microsoft</Type><TenantId>contoso.onmicrosoft.com</TenantId>
        <ClientId>11111111-2222</ClientId><ClientSecret>{enc}</ClientSecret>
        <Authority>https://login.microsoftonline.us/</Authority></Authentication>""",
    )
    auth = load(path)
    assert auth is not None and auth.client_secret == SECRET
    assert (
        auth.flow == "client_credentials" and auth.authority == "https://login.microsoftonline.us"
    )
    assert auth.key_path == tmp_path / "el.key"
    assert SECRET not in repr(auth)
    config = parse_config(path.read_bytes(), path)
    assert config.listeners[0].password.reveal() == ""


def test_delegated_certificate_and_google_kinds(tmp_path: Path) -> None:
    cases = {
        "<Type>Microsoft</Type><TenantId>t</TenantId><ClientId>c</ClientId>": "delegated",
        "<Type>Microsoft</Type><TenantId>t</TenantId><ClientId>c</ClientId>"
        "<CertificateFile>app.pem</CertificateFile>": "client_credentials",
        "<Type>Google</Type><ServiceAccountKeyFile>sa.json</ServiceAccountKeyFile>": (
            "service_account"
        ),
        "<Type>Google</Type><ClientId>c</ClientId><ClientSecret>s</ClientSecret>": (
            "installed_app"
        ),
    }
    certificate_file(tmp_path / "app.pem")
    with OAuthTestServer(tmp_path / "idp") as idp:
        service_account_file(idp, tmp_path / "sa.json", {"x"})
    for body, flow in cases.items():
        auth = load(write(tmp_path, f"<Authentication>{body}</Authentication>"))
        assert auth is not None and auth.flow == flow, body
    auth = load(write(tmp_path, "<Authentication>" + list(cases)[2] + "</Authentication>"))
    assert auth is not None and auth.service_account_key_file == tmp_path / "sa.json"


def test_password_still_required_without_oauth(tmp_path: Path) -> None:
    for body in ("", "<Authentication><Type>Password</Type></Authentication>"):
        found = problems(write(tmp_path, body))
        assert any(p.startswith("Password: missing required element Password") for p in found)
    assert load(write(tmp_path, "<Password>p</Password>")) is None


def test_every_authentication_problem_at_once(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """<Authentication><Type>Microsoft</Type><ClientSecret>env:NO_SUCH_VAR_XY</ClientSecret>
        <CertificateFile>missing.pem</CertificateFile><ServiceAccountKeyFile>x</ServiceAccountKeyFile>
        <Authority>http://login.example</Authority><CaFile>nowhere.pem</CaFile></Authentication>""",
    )
    found = problems(path)
    for expected in (
        "TenantId: required with Type Microsoft",
        "ClientId: required with Type Microsoft",
        "ServiceAccountKeyFile: applies to Type Google only",
        "CertificateFile: give ClientSecret or CertificateFile, not both",
        "CertificateFile: cannot read certificate file",
        "Authority: must be an https:// URL",
        "ClientSecret: environment variable NO_SUCH_VAR_XY is not set",
        "CaFile: CA file",
    ):
        assert any(p.startswith(expected) for p in found), (expected, found)


def test_google_and_password_problems(tmp_path: Path) -> None:
    found = problems(
        write(
            tmp_path,
            "<Authentication><Type>Google</Type><TenantId>t</TenantId>"
            "<ClientId>c</ClientId></Authentication>",
        )
    )
    assert "TenantId: applies to Type Microsoft only" in found
    assert any(p.startswith("ClientSecret: required with Type Google") for p in found)
    (tmp_path / "sa.json").write_text('{"type": "authorized_user"}')
    found = problems(
        write(
            tmp_path,
            "<Authentication><Type>Google</Type><ServiceAccountKeyFile>"
            "sa.json</ServiceAccountKeyFile></Authentication>",
        )
    )
    assert any("is not a service account key" in p for p in found)
    found = problems(
        write(
            tmp_path,
            "<Password>p</Password><Authentication><ClientId>c</ClientId></Authentication>",
        )
    )
    assert found == ["ClientId: applies to Type Microsoft or Google only"]


def test_bad_type_and_unknown_child_are_schema_errors(tmp_path: Path) -> None:
    found = problems(write(tmp_path, "<Authentication><Type>Okta</Type></Authentication>"))
    assert any(p.startswith("Type:") and "'Okta'" in p for p in found), found
    found = problems(write(tmp_path, "<Authentication><Tenant>x</Tenant></Authentication>"))
    assert any("unknown element 'Tenant'; expected one of Type, TenantId" in p for p in found)


def test_oauth_needs_the_key_for_the_token_cache(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "<Authentication><Type>Microsoft</Type><TenantId>t</TenantId>"
        "<ClientId>c</ClientId></Authentication>",
    )
    (tmp_path / "el.key").unlink()
    found = problems(path)
    assert any(p.startswith("Type: OAuth2 tokens are stored encrypted") for p in found), found


def test_pop3_and_smtp_accept_authentication(tmp_path: Path) -> None:
    smtp = """<Acknowledgement><Smtp><HostName>smtp.office365.com</HostName>
      <UserName>acks@contoso.test</UserName><Authentication><Type>Microsoft</Type>
      <TenantId>t</TenantId><ClientId>c</ClientId><ClientSecret>s3</ClientSecret>
      </Authentication></Smtp><FromAddress>acks@contoso.test</FromAddress></Acknowledgement>"""
    auth = "<Authentication><Type>Google</Type><ClientId>c</ClientId><ClientSecret>s</ClientSecret>"
    path = write(tmp_path, auth + "</Authentication>" + smtp, kind="Pop3Listener")
    (lst,) = parse_config(path.read_bytes(), path).pop3_listeners
    assert lst.authentication is not None and lst.authentication.flow == "installed_app"
    assert lst.acknowledgement is not None
    smtp_auth = lst.acknowledgement.smtp.authentication
    assert smtp_auth is not None and smtp_auth.client_secret == "s3"
    assert lst.acknowledgement.smtp.password is None
    found = problems(
        write(
            tmp_path,
            "<Password>p</Password>" + smtp.replace("<UserName>acks@contoso.test</UserName>", ""),
        )
    )
    assert any("Smtp with OAuth2 needs a UserName" in p for p in found), found


def test_check_config_show_never_prints_the_client_secret(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        f"""<Authentication><Type>Microsoft</Type><TenantId>t</TenantId><ClientId>c</ClientId>
        <ClientSecret>{SECRET}</ClientSecret></Authentication>""",
    )
    result = subprocess.run(
        [sys.executable, "-m", "engage_listener", "check-config", "--show", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "authentication = AuthConfig(type='Microsoft'" in result.stdout
    assert SECRET not in result.stdout + result.stderr


def test_oauth_logins_lists_the_mailbox_and_the_smtp_account(tmp_path: Path) -> None:
    smtp = """<Acknowledgement><Smtp><HostName>smtp.gmail.com</HostName>
      <UserName>acks@gmail.test</UserName><Authentication><Type>Google</Type>
      <ClientId>c</ClientId><ClientSecret>s</ClientSecret></Authentication></Smtp>
      <FromAddress>acks@gmail.test</FromAddress></Acknowledgement>"""
    path = write(tmp_path, "<Password>p</Password>" + smtp, kind="Pop3Listener")
    (lst,) = parse_config(path.read_bytes(), path).listeners
    ((what, auth, user, purpose),) = oauth_logins(lst)
    assert (what, user, purpose, auth.type) == ("Box SMTP", "acks@gmail.test", "smtp", "Google")
