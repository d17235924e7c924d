"""Development kit: what the demo, the tests and the benchmarks run against; never installed.

`dovecot` starts a private Dovecot on loopback, `certs` issues the private CA every local
TLS server uses, `samples` writes realistic customer mail, `postgres` starts a private PostgreSQL
(`processes` reads /proc for both). It lives beside the package,
not in it (pyproject's package list includes only `engage_listener*`), and may import
engage_listener; engage_listener never imports it.
"""
