"""What the tests share; no test module imports another (tests/test_no_cross_imports.py).

- fixtures.py: the pytest fixtures, one per real server (Dovecot, aiosmtpd, the identity
  provider, the hostile servers), loaded by tests/conftest.py
- config_xml.py: the one XML configuration builder
- daemon.py: the daemon and its CLI in a subprocess; helpers.py: listeners, mails and the
  store in-process; engine.py, hooks.py, acks.py, oauth.py: per-layer builders;
  pop3.py: POP3 listeners and endpoints built directly
- fakes.py (the clock), faults.py (fault-injection checks), hostile_mail.py (mails built
  to hurt the parser), paths.py (the checkout and the shared corpus)
- servers/: the servers the fixtures start
"""
