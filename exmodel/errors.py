"""User-facing errors.

Every error a user can cause by bad input (a corrupted file, a misspelt config key, an expert whose
card contradicts its weights) is an :class:`ExmodelError`. The CLI prints its message as one line and
exits non-zero; ``--debug`` shows the traceback. Messages name the offending file or key and say what
was expected.
"""


class ExmodelError(Exception):
    """Base class for errors caused by user input; the message is shown as one line."""


class DataError(ExmodelError):
    """A dataset file is missing, corrupted or in an unexpected format."""


class BundleError(ExmodelError):
    """An expert bundle failed validation (integrity, hash, shapes, finiteness, card consistency)."""


class ConfigError(ExmodelError):
    """A run configuration is invalid."""
