"""Where mail comes from: one subpackage per protocol (`imap`, `pop3`), each
implementing the intake contract. Sources are independent of each other (a contract).

May import: `intake` and everything below it.
"""
