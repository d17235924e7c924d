"""IMAP: the aioimaplib adapter (`wire`, `connect`: every workaround in one
place), the session (`session`), wire text and modified UTF-7 (`text`, `utf7`), the
listener (`listener`: connect, backlog, IDLE), one batch (`batch`) and `reset`.
"""
