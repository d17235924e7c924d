"""A small, real identity provider on loopback for the OAuth2 tests.

One HTTPS server (a private CA from the sandbox) speaks the parts of Microsoft
Entra ID and Google that msal and google-auth use, and one plain HTTP server
answers Dovecot's token introspection, so the mail servers accept or refuse
XOAUTH2 logins exactly as the identity provider decides:

* ``/{tenant}/v2.0/.well-known/openid-configuration``, ``/{tenant}/oauth2/v2.0/token``
  (client credentials with a secret or a certificate assertion, device code,
  refresh token) and ``/{tenant}/oauth2/v2.0/devicecode``;
* ``/google/token`` (refresh token, authorization code with PKCE, and the JWT
  bearer grant of service accounts, whose signature is checked);
* ``/introspect`` (HTTP): ``{"active": ..., "username": ...}`` for Dovecot.

Access tokens are opaque random strings bound to one mailbox. Tests revoke,
expire, rotate and inject identity-provider errors through the methods here.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import secrets
import ssl
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from cryptography.x509.oid import NameOID

from devkit.certs import write_certs
from engage_listener.config import secret_refs as engage_secrets
from engage_listener.config.auth import AuthConfig
from engage_listener.oauth.token_cache import TokenCache

DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
JWT_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


@dataclass
class MsApp:
    tenant: str
    client_id: str
    secret: str | None = None
    certificate: x509.Certificate | None = None
    mailbox: str | None = None  # app-only tokens open this mailbox
    secret_expired: bool = False


@dataclass
class Grant:
    user: str
    client_id: str
    scope: str
    tenant: str = ""


@dataclass
class Device:
    client_id: str
    tenant: str
    scope: str
    pending: int
    user: str


@dataclass
class AuthCode:
    client_id: str
    user: str
    challenge: str
    redirect_uri: str
    scope: str
    nonce: str = ""  # Microsoft: echoed in the id token, which msal checks


@dataclass
class _State:
    access: dict[str, tuple[str, float]] = field(default_factory=dict)  # token -> user, exp
    refresh: dict[str, Grant] = field(default_factory=dict)
    apps: list[MsApp] = field(default_factory=list)
    devices: dict[str, Device] = field(default_factory=dict)
    google_clients: dict[str, str] = field(default_factory=dict)
    service_accounts: dict[str, tuple[RSAPublicKey, set[str]]] = field(default_factory=dict)
    codes: dict[str, AuthCode] = field(default_factory=dict)
    denied: set[str] = field(default_factory=set)
    failures: deque[tuple[int, dict[str, Any]]] = field(default_factory=deque)
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    introspected: list[str] = field(default_factory=list)
    issued: list[str] = field(default_factory=list)  # every secret handed out
    app_only: set[str] = field(default_factory=set)  # access tokens of client credentials


class OAuthTestServer:
    """The identity provider; use as a context manager (servers run in threads)."""

    host = "127.0.0.1"

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.ca_file, cert_file, key_file = write_certs(directory)
        self.lock = threading.Lock()
        self.state = _State()
        self.expires_in = 3600
        self.rotate_refresh_tokens = False
        self.device_user = ""
        self.device_pending = 1
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert_file, key_file)
        self._https = ThreadingHTTPServer((self.host, 0), self._handler())
        self._https.socket = context.wrap_socket(self._https.socket, server_side=True)
        self._http = ThreadingHTTPServer((self.host, 0), self._handler())
        self._threads: list[threading.Thread] = []

    # ----- addresses ------------------------------------------------------------------
    @property
    def authority(self) -> str:
        return f"https://{self.host}:{self._https.server_address[1]}"

    @property
    def google_token_uri(self) -> str:
        return f"{self.authority}/google/token"

    @property
    def introspection_url(self) -> str:
        return f"http://{self.host}:{self._http.server_address[1]}/introspect"

    def start(self) -> OAuthTestServer:
        for server in (self._https, self._http):
            thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        for server in (self._https, self._http):
            server.shutdown()
            server.server_close()

    def __enter__(self) -> OAuthTestServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @contextmanager
    def down(self) -> Iterator[None]:
        """The HTTPS side refuses connections meanwhile (the identity provider is down)."""
        port = self._https.server_address[1]
        self._https.shutdown()
        self._https.server_close()
        try:
            yield
        finally:
            context = self._https.socket.context  # type: ignore[attr-defined]
            self._https = ThreadingHTTPServer((self.host, port), self._handler())
            self._https.socket = context.wrap_socket(self._https.socket, server_side=True)
            thread = threading.Thread(target=self._https.serve_forever, args=(0.05,), daemon=True)
            thread.start()

    # ----- set-up -----------------------------------------------------------------------
    def add_ms_app(self, tenant: str, client_id: str, **kwargs: Any) -> MsApp:
        app = MsApp(tenant, client_id, **kwargs)
        with self.lock:
            self.state.apps.append(app)
            if app.secret:
                self.state.issued.append(app.secret)
        return app

    def add_google_client(self, client_id: str, secret: str) -> None:
        with self.lock:
            self.state.google_clients[client_id] = secret
            self.state.issued.append(secret)

    def add_service_account(self, email: str, key: RSAPublicKey, subjects: set[str]) -> None:
        with self.lock:
            self.state.service_accounts[email] = (key, subjects)

    def consent(self, url: str, user: str) -> str:
        """The user allows access at the printed consent URL: the address they land on.
        A Microsoft authorize URL must ask for S256 PKCE, as msal does."""
        query = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
        if "/oauth2/v2.0/authorize" in url:
            assert query.get("code_challenge_method") == "S256", query
            assert query.get("response_type") == "code", query
        code = "code-" + secrets.token_urlsafe(12)
        with self.lock:
            self.state.codes[code] = AuthCode(
                query["client_id"], user, query["code_challenge"], query["redirect_uri"],
                query["scope"], query.get("nonce", ""),
            )  # fmt: skip
        return f"{query['redirect_uri']}/?state={query['state']}&code={code}&scope=x"

    # ----- what tests do to tokens ----------------------------------------------------
    def expire(self, token: str) -> None:
        """The mail servers refuse it from now on (our cache still thinks it is fresh)."""
        with self.lock:
            user, _ = self.state.access[token]
            self.state.access[token] = (user, 0.0)

    def revoke(self, user: str) -> None:
        """Every refresh and access token of `user` is void (password change, admin)."""
        with self.lock:
            for token, grant in list(self.state.refresh.items()):
                if grant.user == user:
                    del self.state.refresh[token]
            for token, (owner, _) in list(self.state.access.items()):
                if owner == user:
                    del self.state.access[token]

    def deny(self, user: str) -> None:
        """The mail servers refuse every token for this mailbox (no mailbox permission)."""
        with self.lock:
            self.state.denied.add(user)

    def fail_next(self, status: int, **body: Any) -> None:
        """The next token request gets this error answer."""
        with self.lock:
            self.state.failures.append((status, body))

    def valid(self, user: str, token: str) -> bool:
        with self.lock:
            owner, expiry = self.state.access.get(token, ("", 0.0))
            return owner == user and expiry > time.time() and user not in self.state.denied

    def grants(self, grant_type: str) -> int:
        """How many token requests of this grant type were made."""
        with self.lock:
            return sum(1 for _, form in self.state.requests if form.get("grant_type") == grant_type)

    def refresh_tokens(self, user: str) -> list[str]:
        with self.lock:
            return [t for t, g in self.state.refresh.items() if g.user == user]

    @property
    def issued(self) -> list[str]:
        """Every secret this server handed out or knows (for leak checks)."""
        with self.lock:
            return list(self.state.issued)

    # ----- token issuing ----------------------------------------------------------------
    def _tokens(self, user: str, grant: Grant | None, old_refresh: str = "") -> dict[str, Any]:
        access = "at-" + secrets.token_urlsafe(24)
        body: dict[str, Any] = {
            "token_type": "Bearer",
            "access_token": access,
            "expires_in": self.expires_in,
            "scope": grant.scope if grant else "https://outlook.office365.com/.default",
        }
        self.state.access[access] = (user, time.time() + self.expires_in)
        self.state.issued.append(access)
        if grant is None:
            self.state.app_only.add(access)
        if grant is not None:
            refresh = old_refresh
            if not old_refresh or self.rotate_refresh_tokens:
                refresh = "rt-" + secrets.token_urlsafe(24)
                self.state.refresh.pop(old_refresh, None)
                self.state.refresh[refresh] = grant
                self.state.issued.append(refresh)
            body["refresh_token"] = refresh
        return body

    def _ms_identity(self, grant: Grant, nonce: str = "") -> dict[str, Any]:
        issuer = f"{self.authority}/{grant.tenant}/v2.0"
        uid = hashlib.sha256(grant.user.encode()).hexdigest()[:16]
        claims = {
            "iss": issuer, "aud": grant.client_id, "sub": uid, "oid": uid, "tid": grant.tenant,
            "preferred_username": grant.user, "iat": int(time.time()),
            "exp": int(time.time()) + 3600,
        }  # fmt: skip
        if nonce:
            claims["nonce"] = nonce
        header = _b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
        info = {"uid": uid, "utid": grant.tenant}
        return {
            "id_token": f"{header}.{_b64(json.dumps(claims).encode())}.",
            "client_info": _b64(json.dumps(info).encode()),
        }

    def _ms_error(
        self, status: int, error: str, code: int, text: str
    ) -> tuple[int, dict[str, Any]]:
        return status, {
            "error": error,
            "error_description": f"AADSTS{code}: {text} Trace ID: 0000 Timestamp: now",
            "error_codes": [code],
        }

    def _ms_app(self, tenant: str, client_id: str) -> tuple[MsApp | None, bool]:
        """(the app in this tenant, whether the client id exists in another tenant)."""
        found = [a for a in self.state.apps if a.client_id == client_id]
        return next((a for a in found if a.tenant == tenant), None), bool(found)

    def ms_token(
        self, tenant: str, form: dict[str, str], endpoint: str
    ) -> tuple[int, dict[str, Any]]:
        grant_type = form.get("grant_type", "")
        app, elsewhere = self._ms_app(tenant, form.get("client_id", ""))
        if app is None and elsewhere:
            return self._ms_error(400, "invalid_request", 50194, "Application is not configured "
                                  "as a multi-tenant application.")  # fmt: skip
        if app is None:
            return self._ms_error(400, "unauthorized_client", 700016, "Application was not "
                                  "found in the directory.")  # fmt: skip
        scope = form.get("scope", "")
        if grant_type == "client_credentials":
            problem = self._ms_client_auth(app, form, endpoint)
            if problem:
                return problem
            return 200, self._tokens(app.mailbox or "", None)
        if grant_type == DEVICE_GRANT:
            device = self.state.devices.get(form.get("device_code", ""))
            if device is None:
                return 400, {"error": "expired_token", "error_description": "AADSTS70019"}
            if device.pending > 0:
                device.pending -= 1
                return 400, {"error": "authorization_pending", "error_description": "AADSTS70016"}
            del self.state.devices[form["device_code"]]
            grant = Grant(device.user, app.client_id, device.scope, tenant)
            return 200, {**self._tokens(device.user, grant), **self._ms_identity(grant)}
        if grant_type == "authorization_code":
            return self._ms_code(app, tenant, form)
        if grant_type == "refresh_token":
            grant = self.state.refresh.get(form.get("refresh_token", ""))
            if grant is None:
                return self._ms_error(400, "invalid_grant", 70000, "The provided grant has "
                                      "expired due to it being revoked.")  # fmt: skip
            grant = Grant(grant.user, grant.client_id, scope or grant.scope, tenant)
            body = self._tokens(grant.user, grant, form["refresh_token"])
            self.state.refresh[body["refresh_token"]] = grant
            return 200, {**body, **self._ms_identity(grant)}
        return 400, {"error": "unsupported_grant_type"}

    def _ms_code(self, app: MsApp, tenant: str, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        """Authorization code with PKCE: the code once, its verifier and redirect URI."""
        code = self.state.codes.pop(form.get("code", ""), None)
        verifier = form.get("code_verifier", "")
        challenge = _b64(hashlib.sha256(verifier.encode()).digest())
        if code is None or code.client_id != app.client_id:
            return self._ms_error(400, "invalid_grant", 70008, "The provided authorization "
                                  "code or refresh token has expired.")  # fmt: skip
        if code.challenge != challenge:
            return self._ms_error(400, "invalid_grant", 501481, "The Code_Verifier does not "
                                  "match the code_challenge supplied in the authorization "
                                  "request.")  # fmt: skip
        if code.redirect_uri != form.get("redirect_uri"):
            return self._ms_error(400, "invalid_grant", 50148, "The redirect_uri does not "
                                  "match.")  # fmt: skip
        grant = Grant(code.user, app.client_id, code.scope, tenant)
        return 200, {**self._tokens(code.user, grant), **self._ms_identity(grant, code.nonce)}

    def _ms_client_auth(self, app: MsApp, form: dict[str, str], endpoint: str) -> Any:
        if "client_assertion" in form:
            if app.certificate is None or form.get("client_assertion_type") != ASSERTION_TYPE:
                return self._ms_error(401, "invalid_client", 700027, "Client assertion failed.")
            key = app.certificate.public_key()
            header = jwt.get_unverified_header(form["client_assertion"])
            thumb = _b64(app.certificate.fingerprint(hashes.SHA1()))
            try:
                claims = jwt.decode(form["client_assertion"], key,  # type: ignore[arg-type]
                                    algorithms=["RS256", "PS256"], audience=endpoint)  # fmt: skip
            except jwt.PyJWTError:
                return self._ms_error(401, "invalid_client", 700027, "Bad signature.")
            if str(header.get("x5t", "")).rstrip("=") != thumb:
                return self._ms_error(401, "invalid_client", 700027, "Unknown certificate.")
            if claims.get("iss") != app.client_id or claims.get("sub") != app.client_id:
                return self._ms_error(401, "invalid_client", 700027, "Wrong issuer.")
            return None
        if app.secret_expired:
            return self._ms_error(401, "invalid_client", 7000222, "The provided client secret "
                                  "keys for app are expired.")  # fmt: skip
        if app.secret is None or form.get("client_secret") != app.secret:
            return self._ms_error(401, "invalid_client", 7000215, "Invalid client secret.")
        return None

    def ms_device(self, tenant: str, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        code, user_code = "dc-" + secrets.token_urlsafe(12), secrets.token_hex(4).upper()
        self.state.devices[code] = Device(form["client_id"], tenant, form.get("scope", ""),
                                          self.device_pending, self.device_user)  # fmt: skip
        url = f"{self.authority}/devicelogin"
        message = f"To sign in, use a web browser to open the page {url} and enter the code "
        message += f"{user_code} to authenticate."
        return 200, {"device_code": code, "user_code": user_code, "verification_uri": url,
                     "expires_in": 900, "interval": 1, "message": message}  # fmt: skip

    def google_token(self, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        grant_type = form.get("grant_type", "")
        if grant_type == JWT_GRANT:
            return self._google_jwt(form["assertion"])
        client = form.get("client_id", "")
        if self.state.google_clients.get(client) != form.get("client_secret") or not client:
            return 401, {"error": "invalid_client", "error_description": "Unauthorized"}
        if grant_type == "authorization_code":
            code = self.state.codes.pop(form.get("code", ""), None)
            verifier = form.get("code_verifier", "")
            challenge = _b64(hashlib.sha256(verifier.encode()).digest())
            if code is None or code.client_id != client or code.challenge != challenge:
                return 400, {"error": "invalid_grant", "error_description": "Bad Request"}
            if code.redirect_uri != form.get("redirect_uri"):
                return 400, {"error": "redirect_uri_mismatch", "error_description": "Bad"}
            return 200, self._tokens(code.user, Grant(code.user, client, code.scope))
        if grant_type == "refresh_token":
            grant = self.state.refresh.get(form.get("refresh_token", ""))
            if grant is None or grant.client_id != client:
                return 400, {"error": "invalid_grant",
                             "error_description": "Token has been expired or revoked."}  # fmt: skip
            return 200, self._tokens(grant.user, grant, form["refresh_token"])
        return 400, {"error": "unsupported_grant_type"}

    def _google_jwt(self, assertion: str) -> tuple[int, dict[str, Any]]:
        issuer = jwt.decode(assertion, options={"verify_signature": False}).get("iss", "")
        key, subjects = self.state.service_accounts.get(issuer, (None, set()))
        if key is None:
            return 400, {"error": "invalid_grant", "error_description": "Invalid JWT Signature."}
        try:
            claims = jwt.decode(assertion, key, algorithms=["RS256"],  # type: ignore[arg-type]
                                audience="https://oauth2.googleapis.com/token")  # fmt: skip
        except jwt.PyJWTError:
            return 400, {"error": "invalid_grant", "error_description": "Invalid JWT Signature."}
        if claims.get("sub") not in subjects or claims.get("scope") != "https://mail.google.com/":
            return 401, {"error": "unauthorized_client", "error_description": "Client is "
                         "unauthorized to retrieve access tokens using this method."}  # fmt: skip
        return 200, self._tokens(claims["sub"], None)

    def introspect(self, token: str) -> dict[str, Any]:
        with self.lock:
            self.state.introspected.append(token)
            owner, expiry = self.state.access.get(token, ("", 0.0))
        active = bool(owner) and expiry > time.time() and owner not in self.state.denied
        return {"active": True, "username": owner} if active else {"active": False}

    # ----- HTTP ---------------------------------------------------------------------------
    def _route(self, method: str, path: str, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        parts = path.strip("/").split("/")
        if path == "/introspect" and method == "POST":
            return 200, self.introspect(form.get("token", ""))
        with self.lock:
            self.state.requests.append((path, dict(form)))
            if method == "POST" and path.endswith("/token") and self.state.failures:
                return self.state.failures.popleft()
            if path.endswith("/v2.0/.well-known/openid-configuration") and method == "GET":
                if parts[0] == "no-such-tenant":
                    return self._ms_error(400, "invalid_tenant", 90002, "Tenant not found.")
                base = f"{self.authority}/{parts[0]}"
                return 200, {
                    "issuer": f"{base}/v2.0",
                    "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
                    "token_endpoint": f"{base}/oauth2/v2.0/token",
                    "device_authorization_endpoint": f"{base}/oauth2/v2.0/devicecode",
                }
            if path.endswith("/oauth2/v2.0/token") and method == "POST":
                return self.ms_token(parts[0], form, f"{self.authority}{path}")
            if path.endswith("/oauth2/v2.0/devicecode") and method == "POST":
                return self.ms_device(parts[0], form)
            if path == "/google/token" and method == "POST":
                return self.google_token(form)
        return 404, {"error": "not_found"}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length).decode() if length else ""
                form = {k: v[0] for k, v in parse_qs(body).items()}
                status, data = server._route(method, urlsplit(self.path).path, form)
                out = json.dumps(data).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def do_GET(self) -> None:
                self._answer("GET")

            def do_POST(self) -> None:
                self._answer("POST")

            def log_message(self, format: str, *args: Any) -> None:
                pass  # keep the test output clean

        return Handler


# ----- helpers for the tests -------------------------------------------------------------
def token_cache(directory: Path) -> tuple[TokenCache, Path]:
    """A fresh token cache and its key file (as `engage-listener keygen` makes it)."""
    key_file = directory / "engage-listener.key"
    if not key_file.exists():
        engage_secrets.generate_key(key_file)
    return TokenCache(directory / "oauth-tokens.json", engage_secrets.load_key(key_file)), key_file


def ms_auth(idp: OAuthTestServer, key_file: Path, **changes: Any) -> AuthConfig:
    """Microsoft settings pointing at the test identity provider (tenant-a, app-only)."""
    values: dict[str, Any] = {
        "type": "Microsoft", "tenant_id": "tenant-a", "client_id": "app-1",
        "authority": idp.authority, "ca_file": idp.ca_file, "key_path": key_file,
    }  # fmt: skip
    values.update(changes)
    return AuthConfig(**values)


def google_auth(idp: OAuthTestServer, key_file: Path, **changes: Any) -> AuthConfig:
    values: dict[str, Any] = {
        "type": "Google", "token_uri": idp.google_token_uri, "ca_file": idp.ca_file,
        "key_path": key_file,
    }  # fmt: skip
    values.update(changes)
    return AuthConfig(**values)


def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def service_account_file(idp: OAuthTestServer, path: Path, subjects: set[str]) -> Path:
    """A Google service account key (JSON) whose public key the identity provider knows."""
    key = rsa_key()
    email = f"listener-{secrets.token_hex(3)}@project.iam.gserviceaccount.com"
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    info = {
        "type": "service_account", "project_id": "project", "private_key_id": "k1",
        "private_key": pem, "client_email": email, "client_id": "1234567890",
        "token_uri": "https://oauth2.googleapis.com/token",
    }  # fmt: skip
    path.write_text(json.dumps(info))
    idp.add_service_account(email, key.public_key(), subjects)
    return path


def certificate_file(path: Path, with_cert: bool = True) -> x509.Certificate:
    """A self-signed app certificate: private key (and certificate) in one PEM file."""
    key = rsa_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "engage-listener app")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    if with_cert:
        pem += cert.public_bytes(serialization.Encoding.PEM)
    path.write_bytes(pem)
    return cert
