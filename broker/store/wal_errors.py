"""The log's OSError subclass, in a module of its own because mypyc compiles subclasses of
Exception but not of OSError: broker/store/wal.py is compiled, this module never is."""


class WalError(OSError):
    """The log failed earlier (see WriteAheadLog.failed) and accepts no more records."""
