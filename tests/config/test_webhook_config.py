"""The Webhook block: https (http to loopback only), every secret form, known events,
per listener or for the whole file."""

from __future__ import annotations

from pathlib import Path

import pytest

from engage_listener.config import secret_refs as secrets
from engage_listener.config.load import parse_config
from engage_listener.config.webhook import WEBHOOK_EVENTS
from engage_listener.errors import ConfigError
from tests.support.config_xml import minimal_listener, wrap


def webhook(url: str = "https://crm.example.org/hooks", secret: str = "s3cret-crm",
            **extra: str) -> str:  # fmt: skip
    inner = "".join(f"<{k}>{v}</{k}>" for k, v in extra.items())
    return f"<Webhook><Url>{url}</Url><Secret>{secret}</Secret>{inner}</Webhook>\n"


def load(body: str, tmp_path: Path) -> object:
    return parse_config(wrap(body), tmp_path / "el.xml")


def problems(body: str, tmp_path: Path) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load(body, tmp_path)
    return [str(p) for p in caught.value.problems]


def test_a_listener_webhook_with_defaults(tmp_path: Path) -> None:
    config = parse_config(wrap(minimal_listener(webhook())), tmp_path / "el.xml")
    (listener,) = config.listeners
    hook = listener.webhook
    assert hook is not None and hook.url == "https://crm.example.org/hooks"
    assert hook.secret == "s3cret-crm" and "s3cret" not in repr(hook)
    assert hook.events == WEBHOOK_EVENTS and hook.timeout == 10 and hook.max_attempts == 12


def test_the_top_level_webhook_serves_listeners_without_their_own(tmp_path: Path) -> None:
    body = (
        webhook("https://crm.example.org/all", Events="case-opened")
        + minimal_listener(id_="A")
        + minimal_listener(
            webhook("https://crm.example.org/b", Events="case-closed,message-added"), id_="B"
        )
    )
    config = parse_config(wrap(body), tmp_path / "el.xml")
    a, b = config.listeners
    assert a.webhook is not None and a.webhook.url.endswith("/all")
    assert a.webhook.events == ("case-opened",)
    assert b.webhook is not None and b.webhook.events == ("case-closed", "message-added")


@pytest.mark.parametrize(
    ("url", "fine"),
    [
        ("https://crm.example.org/h", True),
        ("http://127.0.0.1:8080/h", True),
        ("http://localhost/h", True),
        ("http://[::1]:9000/h", True),
        ("http://crm.example.org/h", False),
        ("http://10.0.0.5/h", False),
        ("ftp://crm.example.org/h", False),
        ("https://user:pw@crm.example.org/h", False),
    ],
)
def test_url_is_https_or_http_to_loopback(tmp_path: Path, url: str, fine: bool) -> None:
    body = minimal_listener(webhook(url))
    if fine:
        load(body, tmp_path)
    else:
        (found,) = problems(body, tmp_path)
        assert ":6: Webhook/Url" in found


def test_unknown_events_and_unreadable_secrets_name_their_line(tmp_path: Path) -> None:
    body = minimal_listener(
        webhook(secret="env:EL_NO_SUCH_VARIABLE", Events="case-opened, case-deleted")
    )
    found = problems(body, tmp_path)
    assert any("Webhook/Events" in p and "case-deleted" in p for p in found)
    assert any("Webhook/Secret" in p and "EL_NO_SUCH_VARIABLE is not set" in p for p in found)


def test_every_secret_form(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key = tmp_path / "el.key"
    secrets.generate_key(key)
    (tmp_path / "hook.txt").write_text("from-file\n")
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "crm-hook").write_text("from-credential")
    monkeypatch.setenv("EL_HOOK_SECRET", "from-env")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    forms = {
        "plain-value": "plain-value",
        secrets.encrypt("from-enc", secrets.load_key(key)): "from-enc",
        "env:EL_HOOK_SECRET": "from-env",
        "file:hook.txt": "from-file",
        "credential:crm-hook": "from-credential",
        "plain:env:literal": "env:literal",
    }
    for form, expected in forms.items():
        tail = f"<Secrets><KeyFile>{key}</KeyFile></Secrets>\n"
        xml = wrap(minimal_listener(webhook(secret=form)) + tail)
        config = parse_config(xml, tmp_path / "el.xml")
        (listener,) = config.listeners
        assert listener.webhook is not None and listener.webhook.secret == expected


def test_only_one_top_level_webhook(tmp_path: Path) -> None:
    found = problems(webhook() + webhook() + minimal_listener(), tmp_path)
    assert any("Webhook: only one is allowed" in p for p in found)
