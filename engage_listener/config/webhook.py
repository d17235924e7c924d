"""The Webhook block: where case events are POSTed for the CRM, signed with a secret.

Part of the configuration (see `config`): a `<Webhook>` in a listener block, or one at
the top of the file for every listener without its own.

Decisions:

* `Url` must be https; plain http only to a loopback address (a CRM agent on the same
  machine), since the body carries customer mail and the signature only proves origin.
* `Secret` takes every secret form (plain, enc:, env:, file:, credential:, plain:), and
  is registered with the log scrubber when resolved, so it can never reach a log line.
* `Events` defaults to all four; an unknown name is a configuration problem, not ignored.
* Each default is defined here once (timeouts, attempts, response cap).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, cast
from urllib.parse import urlsplit

from lxml import etree

from engage_listener.config.xmltree import (
    ca_file_problem,
    line,
    optional,
    relative_to,
    secret_value,
    text,
    values,
)
from engage_listener.errors import ConfigProblem, SecretError

WebhookEventName = Literal["case-opened", "message-added", "case-closed", "case-reopened"]
WEBHOOK_EVENTS: tuple[WebhookEventName, ...] = (
    "case-opened",
    "message-added",
    "case-closed",
    "case-reopened",
)
DEFAULT_WEBHOOK_TIMEOUT = 10  # seconds for one POST: connect, answer and body
DEFAULT_WEBHOOK_MAX_ATTEMPTS = 12  # with the back-off: about 4 hours before giving up
WEBHOOK_MAX_RESPONSE_BYTES = 64 * 1024  # of a receiver's answer read; the rest is dropped


@dataclass(frozen=True)
class WebhookConfig:
    """One Webhook block, defaults applied; `secret` is the resolved value."""

    url: str
    secret: str = field(repr=False)
    events: tuple[WebhookEventName, ...] = WEBHOOK_EVENTS
    ca_file: Path | None = None
    timeout: int = DEFAULT_WEBHOOK_TIMEOUT
    max_attempts: int = DEFAULT_WEBHOOK_MAX_ATTEMPTS
    source_line: int = 0


def _events(value: str | None) -> list[str]:
    return [e for e in re.split(r"[\s,]+", value or "") if e]


def url_problem(url: str) -> str | None:
    """Why `url` may not receive case events (None: it may)."""
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        return "Url must be an https:// address, e.g. https://crm.example.org/hooks/engage"
    if parts.username or parts.password:
        return "Url must not hold a user or password; the Secret signs each request"
    if parts.scheme == "http" and not _loopback(parts.hostname):
        return (
            f"http:// is allowed only to this machine (127.0.0.1, ::1, localhost), not to "
            f"{parts.hostname}; use https://"
        )
    return None


def _loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def webhook_problems(node: etree._Element, path: Path, key_path: Path) -> list[ConfigProblem]:
    """Url, Secret, Events and CaFile problems of one Webhook block."""
    found, file = values(node), str(path)
    problems: list[ConfigProblem] = []

    def problem(name: str, message: str) -> None:
        where = line(found.get(name, node))
        problems.append(ConfigProblem(file, where, f"Webhook/{name}", message))

    url = optional(found, "Url")
    if url is not None and (message := url_problem(url)):
        problem("Url", message)
    secret = found.get("Secret")
    if secret is not None:
        try:
            secret_value(secret, path, key_path)
        except SecretError as exc:
            problem("Secret", str(exc))
    unknown = [e for e in _events(optional(found, "Events")) if e not in WEBHOOK_EVENTS]
    if unknown:
        known = ", ".join(WEBHOOK_EVENTS)
        problem("Events", f"unknown event(s) {', '.join(unknown)}; known: {known}")
    elif "Events" in found and not _events(optional(found, "Events")):
        problem("Events", f"names no event; known: {', '.join(WEBHOOK_EVENTS)}")
    ca = optional(found, "CaFile")
    if ca is not None and (message := ca_file_problem(path, ca)):
        problem("CaFile", message)
    return problems


def webhook_config(node: etree._Element, path: Path, key_path: Path) -> WebhookConfig:
    """The WebhookConfig of a valid Webhook block."""
    found = values(node)
    events = _events(optional(found, "Events"))
    ca = optional(found, "CaFile")
    timeout = optional(found, "Timeout")
    attempts = optional(found, "MaxAttempts")
    return WebhookConfig(
        url=text(found["Url"]),
        secret=secret_value(found["Secret"], path, key_path),
        events=tuple(cast(WebhookEventName, e) for e in dict.fromkeys(events)) or WEBHOOK_EVENTS,
        ca_file=relative_to(path, ca) if ca else None,
        timeout=int(timeout) if timeout else DEFAULT_WEBHOOK_TIMEOUT,
        max_attempts=int(attempts) if attempts else DEFAULT_WEBHOOK_MAX_ATTEMPTS,
        source_line=line(node),
    )


def describe_webhook(webhook: WebhookConfig) -> str:
    """One line for check-config; never the secret."""
    return f"webhook {webhook.url} ({', '.join(webhook.events)})"
