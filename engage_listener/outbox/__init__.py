"""After the commit: delivering what the store queued (acknowledgements) over
SMTP (`smtp`), each at most once (`delivery`).

May import: `store` (the interface), `oauth`, `config`, `observe`, `errors`.
"""
