"""Shared fixtures (tests/support/fixtures.py) and the `dovecot` marker, set from them.

Every user logs in with the same password, so isolation comes from user names:
no two tests ever share a mailbox, and nothing needs cleaning between tests.
"""

from __future__ import annotations

import pytest

# Before anything imports them: their asserts explain themselves like the tests' own.
pytest.register_assert_rewrite("tests.support")

pytest_plugins = ["tests.support.fixtures"]

# Fixtures that start a Dovecot (directly or as a dependency of the test's other fixtures).
DOVECOT_FIXTURES = frozenset({"dovecot", "own_dovecot", "dovecot_oauth"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that gets a Dovecot from a fixture, so `-m "not dovecot"` works."""
    for item in items:
        if DOVECOT_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.dovecot)
