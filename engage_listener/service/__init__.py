"""The running daemon: building every object in one place (`app`), keeping
listener tasks alive and applying reloads (`supervisor`), systemd notify (`sdnotify`),
process memory settings (`memory`).

May import: everything below it (it is the composition root).
"""
