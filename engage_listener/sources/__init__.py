"""Where mail comes from: one subpackage per protocol (`imap`, `pop3`, `graph`), each
implementing the intake contract. Sources are independent of each other (a contract);
what every listener holds is in `listening`, the batching cycle of IMAP and Graph in
`batching`, and where a server is in `endpoint`, which none of them owns.

May import: `intake` and everything below it.
"""
