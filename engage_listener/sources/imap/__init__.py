"""sources.imap."""
