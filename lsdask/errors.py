"""Exceptions with a meaning for the operator.

The CLI turns these into one-line messages and exit codes (no tracebacks):
``UsageError`` and ``ConfigError`` exit with 2, ``InputError`` and any other
``LsdaskError`` with 1.
"""


class LsdaskError(Exception):
    """Base class of errors that are reported to the user without a traceback."""

    exit_code = 1


class UsageError(LsdaskError):
    """Wrong command-line usage."""

    exit_code = 2


class ConfigError(LsdaskError):
    """A release configuration is invalid; the message names the file and the key."""

    exit_code = 2


class InputError(LsdaskError):
    """An input file is missing, corrupt or lacks required content; the message names it."""

    exit_code = 1
