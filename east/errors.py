"""Errors that are the user's to fix (a config value, a data file): ``run.py`` prints them as
one line and exits non-zero, without a traceback (``HYDRA_FULL_ERROR=1`` shows it)."""


class UserError(ValueError):
    """A problem in what the user gave (a config value, a dataset row), not in the code."""


class ConfigError(UserError):
    """A config value the run cannot use: the message names the key, the value and what is
    allowed."""
