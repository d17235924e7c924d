"""Loopback servers the tests talk to: aiosmtpd (smtp_server), an OAuth2 identity provider
(oauth_server), and ones that misbehave on purpose (hostile_*, tcp_proxy). The Dovecot
sandbox is devkit.dovecot, shared with the demo and the benchmark."""
