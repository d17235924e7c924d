"""The case store: the interface and records every caller is typed against, and
its implementations (`sqlite`). No SQL lives outside this package (but the operators'
own `sql:` hooks).

May import: `mail` (address keys), `config`, `observe.logs`, `errors`, `clock`.
"""
