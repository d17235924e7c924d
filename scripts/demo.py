"""Demo: a local Dovecot sandbox with sample mail, the daemon's run --once, the cases.

Run through `bash scripts/dev demo`. Everything lives under ./demo-run (recreated
each time): the sandbox's config and mail, the XML config and the SQLite store.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # devkit lives beside the package and is never installed
    sys.path.insert(0, str(REPO))

from devkit.dovecot import DovecotSandbox  # noqa: E402
from devkit.samples import sample_messages  # noqa: E402

ROOT = REPO / "demo-run"
EXAMPLES = REPO / "examples" / "routing"
USER = "soporte"


def config_xml(sandbox: DovecotSandbox) -> str:
    return f"""<?xml version="1.0" encoding="utf-8"?>
<!-- Written by scripts/demo.py: the local sandbox as one IMAP listener. -->
<EngageIntegrationService>
  <ImapListener ID="Demo">
    <HostName>{sandbox.host}</HostName>
    <Port>{sandbox.imaps_port}</Port>
    <UserName>{USER}</UserName>
    <Password>{sandbox.PASSWORD}</Password>
    <UseSsl>True</UseSsl>
    <CaFile>{sandbox.ca_file}</CaFile>
    <InputFolder>IMAP/New</InputFolder>
    <OutputFolder>IMAP/Done</OutputFolder>
    <ExtractAttachments>True</ExtractAttachments>
    <SyncMaxWaitTime>60</SyncMaxWaitTime>
    <SyncMaxChangesCount>10</SyncMaxChangesCount>
    <CaseProcess>Reclamos</CaseProcess>
    <RoutingHook>sql:{EXAMPLES / "pa_sys_msg_in.sql"}</RoutingHook>
    <ProtocolLogFile>{ROOT}/logs/IMAP-%listener%-%date%-%time%.log</ProtocolLogFile>
  </ImapListener>
  <Process ID="EIS">
    <UseImapListener>True</UseImapListener>
  </Process>
  <Store>
    <Path>demo.sqlite3</Path>
  </Store>
</EngageIntegrationService>
"""


def run(*args: str) -> int:
    print(f"\n$ engage-listener {' '.join(args)}", flush=True)
    return subprocess.call([sys.executable, "-m", "engage_listener", *args])


def main() -> int:
    shutil.rmtree(ROOT, ignore_errors=True)
    ROOT.mkdir(parents=True)
    (ROOT / "logs").mkdir()
    with DovecotSandbox(ROOT / "dovecot") as sandbox:
        sandbox.create_folder(USER, "IMAP/Done")
        mails = sample_messages(8)
        sandbox.append_many(USER, "IMAP/New", mails)
        print(
            f"Dovecot sandbox on {sandbox.host}:{sandbox.imaps_port} (IMAPS); "
            f"{len(mails)} sample mails in {USER}'s IMAP/New"
        )
        config = ROOT / "engage-listener.xml"
        config.write_text(config_xml(sandbox))
        if run("check-config", str(config)) != 0:
            return 1
        if run("run", "--once", "--log-format", "console", "--config", str(config)) != 0:
            return 1
        print(
            f"\nIMAP/New now holds {sandbox.count(USER, 'IMAP/New')} mails, "
            f"IMAP/Done {sandbox.count(USER, 'IMAP/Done')}."
        )
        code = run("cases", "--config", str(config))
    print(f"\nEverything is in {ROOT} (config, store, protocol logs).")
    return code


if __name__ == "__main__":
    sys.exit(main())
