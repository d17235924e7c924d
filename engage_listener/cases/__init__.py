"""The case engine: a parsed mail becomes a case or joins one, routed and maybe
acknowledged, in one store transaction.

- `engine`: customer, case, follow-up, routing and acknowledgement decisions for one mail.
- `follow_ups`: which case a reply may join (participants only, within the process).
- `ack`: composing acknowledgements and whether to send one at all.
- `hooks`, `hook_types`, `hooks_sql`: the installation's routing procedure (python:, sql:).
- `rules`: the listener's Rules (XML) evaluated on a view of the mail, before the hook.
- `routing`: the Rules' outcome and the hook's decision combined and applied to the case.
- `acknowledging`: queueing one mail's acknowledgement (recipient, skip reasons, limits).
- `addresses`: From or Reply-To as the customer (CustomerFrom) and the ack's recipient.

May import: `store` (the interface only), `mail`, `config`, `observe.logs`, `errors`.
Never a source, never a concrete store (import-linter contracts).
"""
