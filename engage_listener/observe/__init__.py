"""How the daemon is observed. Two layers in one package:
`logs` (structlog set-up and the one secret scrub) and `protolog` (protocol log files)
sit at the bottom, since every layer logs; `status` (per-listener state from the store)
and `metrics` (the Prometheus endpoint) sit near the top, since they read the store.
"""
