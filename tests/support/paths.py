"""Where the tests find the checkout's files and the shared third-party mail corpus."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
# Third-party mail read in place, never copied into the repository; tests skip without it.
CORPUS = REPO.parent / "shared" / "corpus"
