"""How much of each reply `mail.reply.new_text` keeps, over the shared mail corpus.

Issue 18 point 3 asks for the new text to be measured on the corpus: how many replies were
cut, and by how much. The corpus (third-party mail from other mail-to-ticket projects) is
read in place from ../shared/corpus beside the checkout and never copied into the repo.

A mail counts as a reply when it has In-Reply-To or References, or its subject starts with
a reply prefix (Re:, AW:, RES:, SV:...). "Cut" means new_text is shorter than the whole
text. The hand-checked sample is tests/mail/test_reply_text.py.

    .venv/bin/python bench/reply_cut.py [--corpus DIR] [--show N]
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from engage_listener.mail.parser import parse  # noqa: E402 - after the path
from engage_listener.mail.reply import new_text  # noqa: E402

REPLY_SUBJECT = re.compile(r"^\s*(re|aw|res|sv|vs|antw|r|rif|odp)\s*(\[\d+\])?\s*:", re.I)


def is_reply(raw: bytes, subject: str) -> bool:
    head = raw.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0].lower()
    threaded = b"\nin-reply-to:" in head or b"\nreferences:" in head
    return threaded or bool(REPLY_SUBJECT.match(subject or ""))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=REPO.parent / "shared" / "corpus")
    parser.add_argument("--show", type=int, default=0, help="print N cut replies' names")
    args = parser.parse_args(argv)
    if not args.corpus.is_dir():
        print(f"no corpus at {args.corpus}", file=sys.stderr)
        return 1
    mails = replies = cut = 0
    kept_share: list[float] = []
    shown = 0
    for path in sorted(p for p in args.corpus.rglob("*") if p.is_file()):
        if path.suffix.lower() in {".md", ".tsv"}:
            continue
        raw = path.read_bytes()
        mail = parse(raw)
        mails += 1
        if not is_reply(raw, mail.subject):
            continue
        replies += 1
        whole = mail.text.strip()
        kept = new_text(mail.text)
        if whole and len(kept) < len(whole):
            cut += 1
            kept_share.append(len(kept) / len(whole))
            if shown < args.show:
                print(f"  cut {len(whole)} -> {len(kept)} chars: {path.relative_to(args.corpus)}")
                shown += 1
    kept_share.sort()
    median = kept_share[len(kept_share) // 2] if kept_share else 0.0
    print(f"{mails} mails, {replies} replies, {cut} replies cut ({cut / max(replies, 1):.0%});")
    print(f"a cut reply keeps {median:.0%} of its text (median)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
