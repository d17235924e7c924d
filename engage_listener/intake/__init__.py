"""Between a source and the case engine: what every source delivers, the one
per-mail path (commit, fail, quarantine, log), parse-ahead, retry and operator control.

May import: `cases`, `outbox`, `store` (the interface), `mail`, `config`, `observe.logs`,
`errors`, `clock`. Never a source and never a concrete store.
"""
