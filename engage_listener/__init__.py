"""engage-listener: customer email to CRM cases, exactly once.

Data flows one way, and the subpackages are layered the same way (import-linter contracts
in pyproject.toml; a wrong-way import fails the test command):

    config -> sources (imap, pop3) -> intake -> mail -> cases -> store -> outbox

From the top: `ops` (the command line), `service` (builds and runs everything),
`observe.metrics` / `observe.status`, `sources`, `intake`, `cases` | `outbox`, `store`,
`mail` | `oauth`, `config`, `observe.protolog`, `observe.logs`, and `errors` | `clock`,
which every layer may use.
"""

__version__ = "0.1.0"
