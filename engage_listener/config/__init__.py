"""The configuration: the XML file (compatible with the original integration service),
validated by its XSD and turned into the frozen model the daemon uses.

- `model`: the frozen dataclasses, each default defined once, policies as Literals.
- `load`: XML -> model, every problem collected with file, line and element.
- `schema` (+ engage-listener.xsd), `xmltree`: XML parsing, XSD validation, readable messages.
- `ack`, `auth`, `templates`: the Acknowledgement and Authentication blocks, the template language.
- `rules`: the Rules block (routing without code), its checks and the RE2 patterns.
- `secret_refs`: `enc:`, `env:`, `file:`, `credential:` secret references.
- `cautions`: warnings about valid but risky settings.

May import: `errors`, `observe.logs` (to register secrets), lxml, re2. Nothing above it.
"""
