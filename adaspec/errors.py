"""User-facing errors.

Every mistake a user can make (a bad path, a bad value, a model that does not fit)
raises an ``AdaspecError`` whose message says what is wrong and how to fix it. The
CLI prints that message on one line and exits non-zero; nothing else is caught, so a
traceback always means a bug in adaspec, never a user mistake.
"""


class AdaspecError(Exception):
    """A problem the user can fix; the message names it and the fix."""


class ConfigError(AdaspecError, ValueError):
    """An invalid option value (sampling parameters, draft length, unknown names)."""


class ModelError(AdaspecError):
    """A model that is missing, corrupt, or does not fit (vocabulary, context)."""
