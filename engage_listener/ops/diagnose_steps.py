"""`test-connection`'s steps, whatever they checked: the record, its collection, the report.

An account's checks (`diagnose` for IMAP, POP3 and SMTP, `diagnose_graph` for Graph) add
their steps to a `Steps`; `render_text` prints them for an operator, `render_json` for
scripts, and `succeeded` is the command's exit status.

Decisions:
- Secrets are masked where a step is recorded (`Steps.add`), not where it is printed: the
  server's or the identity provider's words may quote a password or a client secret, and a
  step never holds one, whoever renders it.
- A step's detail and hint are one line each, whatever the server said: one step is one
  line of the report, its columns aligned.
- Kept apart from the checks for size, and so that the Graph checks share it without
  importing the IMAP and POP3 ones.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Step:
    """One checked step: `account` is imap, pop3, smtp or graph; `hint` says what to change."""

    listener: str
    account: str
    name: str
    ok: bool
    detail: str
    hint: str = ""


class Steps:
    """The steps of one account; scrubs secrets and remembers the step in progress."""

    def __init__(self, listener: str, account: str, secrets: list[str]) -> None:
        self.listener, self.account = listener, account
        self.secrets = [s for s in secrets if s]
        self.steps: list[Step] = []
        self.doing = "connect"

    def add(self, name: str, ok: bool, detail: str, hint: str = "") -> bool:
        def clean(text: str) -> str:
            for secret in self.secrets:
                text = text.replace(secret, "***")
            return " ".join(text.split())  # one line each, whatever the server said

        self.steps.append(Step(self.listener, self.account, name, ok, clean(detail), clean(hint)))
        return ok

    def failed(self, exc: BaseException, hint: str) -> None:
        """A failure in the middle of a session, charged to the step in progress."""
        self.add(self.doing, False, str(exc) or type(exc).__name__, hint)


def succeeded(steps: list[Step]) -> bool:
    """The exit status: something was tested and every step passed."""
    return bool(steps) and all(step.ok for step in steps)


def _verdict(steps: list[Step]) -> str:
    if succeeded(steps):
        return "OK"
    failed = sum(not step.ok for step in steps)
    return f"FAILED ({failed} of {len(steps)} steps)" if steps else "FAILED (nothing tested)"


def render_text(steps: list[Step]) -> str:
    """Aligned columns, one step a line, then the verdict line."""
    widths = [max((len(getattr(s, f)) for s in steps), default=0) for f in ("listener", "name")]
    lines = []
    for s in steps:
        text = s.detail + (f" — hint: {s.hint}" if s.hint else "")
        status = "OK" if s.ok else "FAILED"
        row = f"{s.listener:<{widths[0]}}  {s.account:<4}  {s.name:<{widths[1]}}  {status:<6}  "
        lines.append(row + text)
    return "\n".join([*lines, f"Test result: {_verdict(steps)}"])


def render_json(steps: list[Step]) -> str:
    """The same facts for scripts: the verdict, a failure count and every step."""
    result = "OK" if succeeded(steps) else "FAILED"
    failed = sum(not step.ok for step in steps)
    document = {"result": result, "failed": failed, "steps": [asdict(s) for s in steps]}
    return json.dumps(document, indent=2, ensure_ascii=False)
