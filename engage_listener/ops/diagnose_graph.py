"""`test-connection` for a Graph listener: token, mailbox, folders, permission to read.

The steps an operator needs to tell apart the usual failures of a new Microsoft 365 set-up:
the app cannot get a token (wrong tenant, secret, consent: the identity provider's advice),
the mailbox refuses the app (403: the Mail.ReadWrite permission, or the mailbox outside the
app's access policy or RBAC scope), a folder path that does not exist (``--create-folders``
makes the missing ones, which also proves the permission to write).

Decisions:
- Nothing is moved or deleted to prove the permission to move: creating a folder proves
  Mail.ReadWrite, and only `--create-folders` writes anything.
- The acknowledgement's SMTP account is checked after these steps by the same
  `diagnose.test_smtp` as for IMAP and POP3 (`commands.test_connections`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from engage_listener.config.model import ListenerConfig
from engage_listener.errors import EngageError
from engage_listener.ops.diagnose_steps import Step, Steps
from engage_listener.sources.graph.answers import GraphAccessDenied
from engage_listener.sources.graph.folders import ensure_folder, find_folder, sibling
from engage_listener.sources.graph.http import GraphSession

SIGN_IN_HINT = (
    "check TenantId, ClientId and the client secret or certificate of the app registration, "
    "and that Authority and GraphEndpoint belong to the same cloud"
)
ACCESS_HINT = (
    "grant the app the Mail.ReadWrite application permission with admin consent, and include "
    "the mailbox in its application access policy or RBAC scope"
)
DELEGATED_ACCESS_HINT = (
    "give the user who signed in (auth login) Full Access to the mailbox, and the app the "
    "delegated Mail.ReadWrite.Shared permission"
)


async def test_graph(
    cfg: ListenerConfig,
    token: Callable[[bool], Awaitable[str]],
    connect: Callable[[], GraphSession],
    *,
    create_folders: bool = False,
) -> list[Step]:
    """Every step for one Graph listener, stopping at the first that makes the rest moot."""
    secret = cfg.authentication.client_secret if cfg.authentication else None
    run = Steps(cfg.id, "graph", [secret or ""])
    try:
        await token(False)
    except EngageError as exc:
        run.add("token", False, str(exc), SIGN_IN_HINT)
        return run.steps
    run.add("token", True, f"access token for {cfg.graph_endpoint}")
    async with connect() as session:
        try:
            await _mailbox(run, session, cfg, create_folders)
        except GraphAccessDenied as exc:
            delegated = session.settings.delegated
            run.add(run.doing, False, str(exc), DELEGATED_ACCESS_HINT if delegated else ACCESS_HINT)
        except EngageError as exc:
            run.failed(exc, "check GraphEndpoint, CaFile and the network (proxy: HTTPS_PROXY)")
    return run.steps


async def _mailbox(run: Steps, session: GraphSession, cfg: ListenerConfig, create: bool) -> None:
    run.doing = "mailbox"
    inbox = await session.get_json(f"{session.base}/mailFolders/inbox")
    run.add("mailbox", True, f"{cfg.username}: inbox has {inbox.get('totalItemCount', '?')} mails")
    error = cfg.error_folder or sibling(cfg.input_folder, "Error")
    wanted = [("input folder", cfg.input_folder, True), ("error folder", error, False)]
    if cfg.output_folder:
        wanted.insert(1, ("output folder", cfg.output_folder, True))
    else:
        run.add("output folder", True, "none: processed mail is deleted (to Deleted Items)")
    input_id = None
    for name, path, required in wanted:
        run.doing = name
        found = await find_folder(session, path)
        if found is None and create:
            found, _ = await ensure_folder(session, path)
            run.add(name, True, f"{path}: created")
        elif found is None and required:
            run.add(name, False, f"{path}: not found", "create it, or run with --create-folders")
        else:
            run.add(name, True, f"{path}: " + ("found" if found else "created when first needed"))
        input_id = found if name == "input folder" else input_id
    if input_id is not None:
        run.doing = "read"
        where = f"{session.base}/mailFolders/{input_id}/messages"
        page = await session.get_json(where, {"$top": "1", "$select": "id"})
        run.add("read", True, f"may read {cfg.input_folder} ({len(page.get('value', []))} seen)")
