"""Errors a user can cause. The CLI prints them as one clear message (no traceback) and exits non-zero."""


class RaydfError(Exception):
    """Base class of every error caused by the user's input (config, data, command line)."""

    exit_code = 2


class ConfigError(RaydfError):
    """A config key is unknown, has the wrong type, or an invalid value. The message names the key."""


class DataError(RaydfError):
    """A data table, file or image cannot be used. The message names the file (and row) and what to do."""
