"""POP3: bounded reads (`wire`), the poplib session (`session`), the
listener (`listener`: poll, take each new mail once, delete after) and the UIDL ledger
checks before DELE (`ledger`).
"""
