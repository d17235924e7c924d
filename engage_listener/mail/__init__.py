"""One raw mail, read: its structure, header fields, bodies, attachments, subject
token, whether a machine wrote it, and parsing it within a budget in worker processes.

- `parser` (with `tree`, `text`, `fields`, `parts`): raw bytes -> ParsedMail, never failing.
- `subjects`, `automatic`, `authres`: case tokens, automatic-mail detection, RFC 8601.
- `parse_pool`: the parse in worker processes with a time budget per mail.

May import: the standard library and `errors`. Nothing of the daemon (an import-linter
contract): the parser is the hostile-input boundary and must stay testable alone.
"""
