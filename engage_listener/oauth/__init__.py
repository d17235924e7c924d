"""OAuth2 for Microsoft 365 and Google: token providers (`provider`, `microsoft`,
`google`), the encrypted token cache (`token_cache`) and identity-provider errors in plain
words (`advice`).

May import: `config`, `observe.logs`, `errors`.
"""
