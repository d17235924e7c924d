"""The warnings of a valid configuration: settings that work but an operator should know of.

Read by check-config and at start-up (`config_warnings`). Every setting that lets a
credential travel in clear is warned each time check-config runs and at start-up, on
purpose: it must never become something people stop seeing.
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from engage_listener.config.model import Config, ListenerConfig


def config_warnings(config: Config) -> list[str]:
    """Valid but risky settings, for check-config and the start-up log."""
    found: list[str] = []
    if not config.use_imap_listener and config.imap_listeners:
        found.append("IMAP listening is off: Process/UseImapListener is not True")
    if not config.use_pop3_listener and config.pop3_listeners:
        found.append("POP3 listening is off: Process/UsePop3Listener is not True")
    if not config.use_graph_listener and config.graph_listeners:
        found.append("Graph listening is off: Process/UseGraphListener is not True")
    if config.listeners and not config.enabled_listeners():
        found.append("no listener will run: every one is disabled or switched off")
    for lst in config.listeners:
        found.extend(_listener_warnings(lst))
    if config.workers == 0:
        found.append(
            "Process/Workers is 0: mails are parsed in the daemon's own process, with no "
            "time budget (a hostile mail can hold every listener)"
        )
    if config.metrics is not None and not _loopback(config.metrics.host):
        where = f"[{config.metrics.host}]" if ":" in config.metrics.host else config.metrics.host
        found.append(
            f"metrics endpoint on {where}:{config.metrics.port} is reachable from the "
            "network; it has no authentication"
        )
    return [*config.notices, *found]


def _loopback(host: str) -> bool:
    """Whether only this machine can reach `host` (a name other than localhost: unknown)."""
    if host.lower() in {"localhost", "localhost.localdomain"}:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _listener_warnings(lst: ListenerConfig) -> list[str]:
    """Warnings for one listener; a disabled one only says so."""
    if not lst.enabled:
        return [f"listener {lst.id}: disabled (Enabled is False)"]
    found: list[str] = []
    if lst.protocol == "pop3":
        found.extend(_pop3_warnings(lst))
    elif lst.protocol == "graph" and lst.output_folder is None:
        found.append(
            f"listener {lst.id}: no OutputFolder, processed mail will be DELETED "
            "(moved to Deleted Items)"
        )
    elif lst.output_folder is None:
        found.append(f"listener {lst.id}: no OutputFolder, processed mail will be DELETED")
    return found + _cleartext_warnings(lst)


def _pop3_warnings(lst: ListenerConfig) -> list[str]:
    """What a POP3 listener ignores or does differently from an IMAP one."""
    found: list[str] = []
    if lst.output_folder is not None:
        found.append(f"listener {lst.id}: POP3 cannot move mail, OutputFolder is ignored")
    if not lst.leave_on_server:
        found.append(f"listener {lst.id}: POP3 deletes processed mail from the server")
    if lst.read_from_date is not None:
        found.append(
            f"listener {lst.id}: POP3 has no received dates, ReadFromDate is compared with "
            "each mail's Date header (set by the sender: approximate)"
        )
    return found


def _cleartext_warnings(lst: ListenerConfig) -> list[str]:
    """Every setting that lets a credential travel in clear: warned each time, on purpose."""
    found: list[str] = []
    if not lst.use_ssl and lst.allow_plaintext_login:
        found.append(
            f"listener {lst.id}: AllowPlaintextLogin is True, credentials may be sent in clear "
            f"to {lst.host}:{lst.port} when it offers no STARTTLS"
        )
    elif not lst.use_ssl:
        found.append(
            f"listener {lst.id}: UseSsl is False, {lst.host}:{lst.port} must offer STARTTLS "
            "(login is refused without it)"
        )
    ack = lst.acknowledgement
    if ack is not None and ack.smtp.allow_plaintext_login and ack.smtp.security == "None":
        found.append(
            f"listener {lst.id}: Smtp AllowPlaintextLogin is True, the SMTP password to "
            f"{ack.smtp.host}:{ack.smtp.port} is sent in clear"
        )
    return found
