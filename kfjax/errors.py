"""Errors kfjax raises for bad input. The CLI prints the message as one line and exits with code 2.

Every message says what was wrong and what to do about it.
"""


class KfjaxError(Exception):
    """Base class of the errors that reach the user as one line."""


class InputError(KfjaxError):
    """A file, array or argument given by the user is missing, corrupt or has the wrong shape/values."""


class DataError(KfjaxError):
    """A data source cannot be fetched, verified or read."""


class ConfigError(KfjaxError):
    """A config file, override key/value or method name is not valid."""
