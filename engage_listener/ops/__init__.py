"""The operator's command line: the grammar (`cli_parser`), dispatch (`cli`),
store and server commands (`commands`, `admin`, `search`), `test-connection` (`diagnose`,
`diagnose_oauth`), `rules test` (`rules`) and terminal-safe output (`terminal`).

May import: everything (the top layer).
"""
