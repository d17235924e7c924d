"""The PostgreSQL store (issue 16): psycopg 3 with its pool; several daemons may share it.

Only `store.open` names it (by module path), so psycopg is imported only when a
configuration asks for PostgreSQL: an installation without the `postgres` extra runs on
SQLite as before.
"""
