"""A fresh PostgreSQL database holding only the lease tables, for the coordinator's tests.

The tables come from `LEASE_DDL` (the copy of the PostgreSQL store's migration that the
coordination module keeps); each test gets a database of its own on the session's server.
"""

from __future__ import annotations

import uuid

import psycopg
import pytest

from devkit.postgres import PostgresServer
from engage_listener.service.leases import LEASE_DDL


@pytest.fixture
def lease_db(postgres_server: PostgresServer) -> str:
    """The URL of a new database with `daemons` and `listener_leases`."""
    url = postgres_server.create_database(f"leases_{uuid.uuid4().hex[:12]}")
    with psycopg.connect(url, autocommit=True) as conn:
        for statement in LEASE_DDL:
            conn.execute(statement)
    return url
