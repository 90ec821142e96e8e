"""The command modules of ``kvsessions``: each has ``register(subparsers)``."""
