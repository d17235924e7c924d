"""No test module imports another: what tests share lives in tests/support (issue 15.6).

A test module imported by another runs its module-level code and fixtures twice and ties
two files' refactorings together; shared builders, fixtures and servers belong in
tests/support, which imports no test module either.
"""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def _is_test_module(module: str) -> bool:
    return module.startswith("tests.") and module.rsplit(".", 1)[-1].startswith("test_")


def _imported(path: Path) -> set[str]:
    """Every module `path` imports, names imported from a package counted as modules."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.ImportFrom):  # relative: resolved against the file's package
            package = path.parent.relative_to(TESTS.parent).parts
            base = ".".join(package[: len(package) - node.level + 1])
            module = f"{base}.{node.module}" if node.module else base
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def test_no_module_under_tests_imports_a_test_module() -> None:
    offenders = {
        str(path.relative_to(TESTS)): sorted(m for m in _imported(path) if _is_test_module(m))
        for path in sorted(TESTS.rglob("*.py"))
    }
    assert {path: mods for path, mods in offenders.items() if mods} == {}


def test_the_check_sees_an_import_of_a_test_module(tmp_path: Path) -> None:
    """The check itself: each import form of another test module is seen."""
    for source in (
        "from tests.ops.test_cli_json import main\n",
        "from tests.ops import test_cli_json\n",
        "import tests.ops.test_cli_json\n",
    ):
        written = tmp_path / "sample.py"
        written.write_text(source)
        assert any(_is_test_module(m) for m in _imported(written)), source
