"""Errors a user can cause, each raised with one sentence naming the field and what is valid."""


class ConfigError(ValueError):
    """A config field with a value the library cannot use."""
