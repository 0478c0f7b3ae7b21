"""One module per subcommand; each has ``add(sub)`` (its arguments) and ``run(args)``.

Helpers several commands share (argument types, signal handling, exit codes)
live in ``common``.
"""
