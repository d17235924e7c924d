"""sources.pop3."""
