"""After the commit: delivering what the store queued: acknowledgements over SMTP
(`smtp`), each at most once (`delivery`); case events to the CRM over HTTPS
(`webhook_http`), at least once and in order per case (`webhooks`).

May import: `store` (the interface), `oauth`, `config`, `observe`, `errors`.
"""
