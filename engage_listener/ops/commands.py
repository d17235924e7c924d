"""Operator commands that act on the store or the servers outside the daemon.

The second half of the application layer (see `app`, which builds the daemon): each
function opens what it needs from the configuration, does one job, and closes it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TextIO

from engage_listener.cases.engine import PENDING, REPLAY_MAILBOX, CaseEngine
from engage_listener.cases.hooks import RoutingHook
from engage_listener.config import secret_refs as secrets
from engage_listener.config.auth import AuthConfig
from engage_listener.config.model import Config, ListenerConfig, oauth_logins
from engage_listener.errors import EngageError, QuarantineNow
from engage_listener.intake.control import request_date, resume, start_of_day
from engage_listener.oauth.provider import (
    IdentityProviderUnavailable,
    OAuthError,
    auth_status,
    login_interactive,
)
from engage_listener.oauth.token_cache import TokenCache, open_cache
from engage_listener.observe.logs import register_secret
from engage_listener.observe.status import ListenerStatus, read_status, render_status
from engage_listener.ops import admin, diagnose
from engage_listener.ops.diagnose_steps import Step
from engage_listener.ops.search import Criteria, Hit, search_mailbox
from engage_listener.service.build import (
    endpoint_for,
    engine_settings,
    load_hooks,
    pop3_endpoint_for,
    smtp_endpoints,
)
from engage_listener.service.cluster import ClusterView, listener_owners, read_cluster
from engage_listener.sources.imap.session import ImapSession
from engage_listener.store.interface import CaseSummary, MailKey, Store
from engage_listener.store.open import open_store


async def list_cases(config: Config) -> list[CaseSummary]:
    """Cases in the store, for `engage-listener cases`."""
    store = await open_store(config.store)
    try:
        return await store.list_cases()
    finally:
        await store.close()


async def replay_quarantine(config: Config, entry_ids: Sequence[int]) -> list[str]:
    """Run quarantined mails through their listener's engine again; one line per mail."""
    hooks = load_hooks(config)
    listeners = {c.id: c for c in config.listeners}
    store = await open_store(config.store)
    lines: list[str] = []
    try:
        for entry_id in entry_ids:
            lines.append(await _replay_one(store, listeners, hooks, entry_id))
    finally:
        await store.close()
    return lines


async def _replay_one(
    store: Store,
    listeners: dict[str, ListenerConfig],
    hooks: dict[str, RoutingHook],
    entry_id: int,
) -> str:
    found = await admin.get_quarantine(store, entry_id)
    if found is None:
        raise EngageError(f"no quarantine entry {entry_id}")
    entry, raw = found
    if entry.state != "held":
        return f"{entry_id}: already {entry.state} (case {entry.case_id})"
    if entry.reason.startswith("oversize"):
        # Only the headers were fetched: a case made of them would lose the mail's body.
        return (
            f"{entry_id}: not replayed: only the headers of an oversize mail are stored; "
            "raise MaxMessageSize, then move the mail back to the input folder"
        )
    cfg = listeners.get(entry.listener)
    if cfg is None:
        raise EngageError(
            f"quarantine entry {entry_id}: listener {entry.listener!r} is no "
            "longer in the configuration"
        )
    engine = CaseEngine(store, engine_settings(cfg, hooks.get(cfg.id)))
    key = MailKey(cfg.id, REPLAY_MAILBOX, "", str(entry_id))
    try:
        done = await engine.ingest(key, raw)
    except QuarantineNow as exc:  # a Rule or the hook quarantines it again: left held
        return f"{entry_id}: not replayed: {exc}"
    await admin.mark_replayed(store, entry_id, done.case_id)
    return f"{entry_id}: replayed into case {done.case_number or '(ignored)'}"


@dataclass(frozen=True)
class Decision:
    """What `approve`/`reject` did with one case id: `done` is False when the case does not
    exist or was not pending-approval (nothing changed); `text` is the line to print."""

    case_id: int
    done: bool
    text: str


async def decide_cases(config: Config, case_ids: Sequence[int], *, approve: bool) -> list[Decision]:
    """`approve` (then route and acknowledge) or `reject` cases awaiting approval."""
    hooks = load_hooks(config)
    listeners = {c.id: c for c in config.listeners}
    store = await open_store(config.store)
    decisions: list[Decision] = []
    try:
        for case_id in case_ids:
            found = await store.case_state(case_id)
            if found is None:
                decisions.append(Decision(case_id, False, f"{case_id}: no such case"))
                continue
            listener, status, number = found.listener, found.status, found.case_number
            if status != PENDING:
                # The same words the engine uses; nothing to decide, nothing written.
                text = f"case {number} is {status}, not {PENDING}"
                decisions.append(Decision(case_id, False, text))
                continue
            if not approve:
                text = await admin.reject_case(store, case_id, str(number), str(status))
                decisions.append(Decision(case_id, True, text))
                continue
            cfg = listeners.get(str(listener))
            if cfg is None:
                raise EngageError(f"case {number}: listener {listener!r} is not configured")
            engine = CaseEngine(store, engine_settings(cfg, hooks.get(cfg.id)))
            decisions.append(Decision(case_id, True, await engine.approve(case_id)))
    finally:
        await store.close()
    return decisions


@dataclass(frozen=True)
class ControlResult:
    """What `reset`/`resume` did: `action` is "pause" (a future date), "reset" (a past or
    present date: mail since then is re-examined) or "resume"; `date` the day given and
    `time` its 00:00 in the listener's time zone (both None for resume)."""

    listener: str
    action: str
    date: str | None
    time: str | None
    message: str


async def control_listener(config: Config, listener: str, day: dt.date | None) -> ControlResult:
    """`reset --date DAY` (a pause or a re-examination) or `resume` (day None). A POP3
    listener may be paused and resumed; a past day re-reads only under LeaveOnServer (see
    `sources.pop3.dates`: without it, mail taken was deleted from the server)."""
    cfg = {c.id: c for c in config.listeners}.get(listener)
    if cfg is None:
        raise EngageError(f"no listener {listener!r} in {config.path}")
    now = dt.datetime.now(dt.UTC)
    moment = start_of_day(day, cfg.time_zone) if day is not None else None
    if cfg.protocol == "pop3" and moment is not None and moment <= now and not cfg.leave_on_server:
        raise EngageError(
            f"listener {listener!r} is a POP3 listener without LeaveOnServer: each mail it "
            "took was deleted from the server, so there is nothing to read again "
            "(a future date still pauses it)"
        )
    store = await open_store(config.store)
    try:
        if day is None or moment is None:
            return ControlResult(listener, "resume", None, None, await resume(store, listener))
        # request_date pauses when the day is in the future
        message = await request_date(store, listener, day, cfg.time_zone, now)
        action = "pause" if moment > now else "reset"
        return ControlResult(listener, action, day.isoformat(), moment.isoformat(), message)
    finally:
        await store.close()


async def _search_graph(cfg: ListenerConfig, store: Store, criteria: Criteria) -> list[Hit]:
    """`search` on a Graph listener (imported here: aiohttp only when needed)."""
    from engage_listener.ops.search_graph import search_graph  # noqa: PLC0415
    from engage_listener.service.build_graph import graph_connect  # noqa: PLC0415

    async with graph_connect(cfg)() as session:
        return await search_graph(session, cfg, criteria, store=store)


async def search(config: Config, listener: str, criteria: Criteria) -> list[Hit]:
    """Search a listener's mailbox on the server (IMAP and Graph listeners)."""
    cfg = {c.id: c for c in config.listeners}.get(listener)
    if cfg is None:
        raise EngageError(f"no listener {listener!r} in {config.path}")
    if cfg.protocol == "graph":
        store = await open_store(config.store)
        try:
            return await _search_graph(cfg, store, criteria)
        finally:
            await store.close()
    if cfg.protocol != "imap":
        raise EngageError(f"listener {listener!r} reads POP3, which cannot search the mailbox")
    register_secret(cfg.password.reveal())
    store = await open_store(config.store)
    session = await ImapSession.open(endpoint_for(cfg))
    try:
        return await search_mailbox(session, criteria, store=store, listener=cfg.id)
    finally:
        await session.logout()
        await store.close()


async def status_rows(config: Config) -> list[ListenerStatus]:
    """Every configured listener's status, from the heartbeats the daemon writes to the store."""
    owners = await listener_owners(config)  # None: one daemon, the heartbeats' pid
    store = await open_store(config.store)
    try:
        zones = {c.id: c.time_zone for c in config.listeners}
        ids = [c.id for c in config.listeners]
        return await read_status(store, ids, tz=zones, owners=owners)
    finally:
        await store.close()


async def cluster_view(config: Config) -> ClusterView:
    """`engage-listener cluster`: the daemons and the leases."""
    return await read_cluster(config)


async def status(config: Config) -> str:
    """`engage-listener status`, from the heartbeats the daemon writes to the store."""
    return render_status(await status_rows(config))


async def _test_graph(cfg: ListenerConfig, create_folders: bool) -> list[Step]:
    """`test-connection` of a Graph listener (imported here: aiohttp only when needed)."""
    from engage_listener.ops.diagnose_graph import test_graph  # noqa: PLC0415
    from engage_listener.service.build_graph import graph_connect, graph_token_source  # noqa: PLC0415

    token = graph_token_source(cfg)
    return await test_graph(cfg, token, graph_connect(cfg, token), create_folders=create_folders)


async def test_connections(
    config: Config, ids: Sequence[str], *, create_folders: bool, send_to: str | None
) -> list[Step]:
    """`test-connection`: every step of every (chosen) listener's accounts, in order."""
    chosen = [c for c in config.listeners if not ids or c.id in ids]
    unknown = set(ids) - {c.id for c in config.listeners}
    if unknown:
        raise EngageError(f"no listener {', '.join(sorted(unknown))} in {config.path}")
    smtp = smtp_endpoints(config, enabled_only=False)
    steps: list[Step] = []
    for cfg in chosen:
        if cfg.protocol == "graph":
            steps += await _test_graph(cfg, create_folders)
            steps += await diagnose.test_smtp(cfg, smtp.get(cfg.id), send_to)
            continue
        register_secret(cfg.password.reveal())
        pop3 = cfg.protocol == "pop3"
        steps += await diagnose.test_listener(
            cfg,
            imap_endpoint=None if pop3 else endpoint_for(cfg),
            pop3_endpoint=pop3_endpoint_for(cfg) if pop3 else None,
            smtp_endpoint=smtp.get(cfg.id),
            create_folders=create_folders,
            send_to=send_to,
        )
    return steps


def _logins(config: Config, listener: str | None) -> list[tuple[str, AuthConfig, str, str]]:
    chosen = [c for c in config.listeners if listener is None or c.id == listener]
    if listener is not None and not chosen:
        raise EngageError(f"no listener {listener!r} in {config.path}")
    return [entry for cfg in chosen for entry in oauth_logins(cfg)]


def _cache(auth: AuthConfig) -> TokenCache:
    return open_cache(auth.key_path or secrets.default_key_path())


async def auth_login(
    config: Config, listener: str, out: TextIO, inp: TextIO, device_code: bool = False
) -> int:
    """`auth login LISTENER`: the one-time interactive sign-in of its OAuth2 accounts."""
    logins = _logins(config, listener)
    if not logins:
        raise EngageError(f"listener {listener!r} has no OAuth2 account (Authentication)")
    origin = {c.id: c.graph_origin for c in config.listeners}.get(listener)
    for what, auth, user, purpose in logins:
        print(f"{what}: signing in as {user}", file=out)
        try:
            await login_interactive(
                auth,
                user,
                _cache(auth),
                out=out,
                inp=inp,
                purpose=purpose,
                device_code=device_code,
                resource=origin if purpose == "graph" else None,
            )
        except (OAuthError, IdentityProviderUnavailable) as exc:
            print(f"{what}: {exc}", file=out)
            return 1
        print(f"{what}: signed in", file=out)
    return 0


def auth_statuses(config: Config) -> list[dict[str, str]]:
    """`auth status`: kind, expiry and last refresh of every OAuth2 account; no secret."""
    return [auth_status(auth, user, _cache(auth)) for _, auth, user, _ in _logins(config, None)]
