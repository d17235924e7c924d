"""The embedded store: SQLite in WAL mode with synchronous=FULL, one
connection shared by the event loop and its own thread (`connection`), the versioned
schema (`schema`), one mail's transaction (`transaction`), the store (`store`).
"""
